"""Bounded memory whatever the objects (issue 17, item 2): a read stops at its bound in both
stores, an object over its bound is refused from its size without being read, an image's pixel
count is checked from its header before any decoding, and the rest of the date completes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from moto import mock_aws

from rivbulk_pipeline.core.errors import ObjectChanged, ObjectTooLarge
from rivbulk_pipeline.resources.aws import AwsClients
from rivbulk_pipeline.resources.object_store import LocalObjectStore, ObjectStoreResource, S3ObjectStore
from rivbulk_pipeline_tests.test_local_store import fake_aws, md5
from rivbulk_pipeline_tests.test_s3_store import FaultyFront, direct, front, moto_endpoint, moto_server, aws_env, through  # noqa: F401

BUCKET = "images"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStoreResource]:
    if request.param == "local":
        local = LocalObjectStore(root=str(tmp_path / "store"))
        local.create_bucket(BUCKET)
        yield local
        return
    fake_aws(monkeypatch, tmp_path)
    with mock_aws():
        s3 = S3ObjectStore(aws=AwsClients(region_name="us-east-1"))
        s3.create_bucket(BUCKET)
        yield s3


def test_a_bounded_read_returns_objects_up_to_the_bound_and_refuses_larger_ones(store: ObjectStoreResource) -> None:
    store.put_bytes(BUCKET, "empty.json", b"")
    store.put_bytes(BUCKET, "exact.json", b"x" * 100)
    store.put_bytes(BUCKET, "over.json", b"x" * 101)
    assert store.get_bytes(BUCKET, "empty.json", max_bytes=100) == b""
    assert store.get_bytes(BUCKET, "exact.json", max_bytes=100) == b"x" * 100
    with pytest.raises(ObjectTooLarge, match=r"s3://images/over.json: the object is 101 bytes, over the 100-byte bound") as caught:
        store.get_bytes(BUCKET, "over.json", max_bytes=100)
    assert caught.value.size == 101 and caught.value.bound == 100
    # with IfMatch, the condition still holds on a bounded read
    assert store.get_bytes(BUCKET, "exact.json", if_match=md5(b"x" * 100), max_bytes=100) == b"x" * 100
    with pytest.raises(ObjectChanged):
        store.get_bytes(BUCKET, "exact.json", if_match=md5(b"other"), max_bytes=100)
    with pytest.raises(ObjectChanged):
        store.get_bytes(BUCKET, "empty.json", if_match=md5(b"other"), max_bytes=100)


def test_the_local_store_refuses_a_large_sparse_file_without_reading_it(tmp_path: Path) -> None:
    local = LocalObjectStore(root=str(tmp_path / "store"))
    local.create_bucket(BUCKET)
    big = tmp_path / "store" / BUCKET / "people" / "big.json"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:
        f.truncate(500 * 1024 * 1024)  # 500 MB that take no disk, and would take 500 MB of memory
    with pytest.raises(ObjectTooLarge, match="524,288,000 bytes, over the 65,536-byte bound"):
        local.get_bytes(BUCKET, "people/big.json", max_bytes=65_536)


def test_s3_asks_for_a_range_and_reads_no_more_than_the_bound_over_http(direct: S3ObjectStore, front) -> None:
    body = os.urandom(3 * 1024 * 1024)
    direct.put_bytes(BUCKET, "big.png", body)
    direct.put_bytes(BUCKET, "small.png", body[:1000])
    direct.put_bytes(BUCKET, "empty.png", b"")
    server = front(lambda n, h: None)
    store = through(server, max_attempts=2)
    with pytest.raises(ObjectTooLarge, match="3,145,728 bytes, over the 1,000-byte bound"):
        store.get_bytes(BUCKET, "big.png", max_bytes=1000)
    assert store.get_bytes(BUCKET, "small.png", max_bytes=1000) == body[:1000]
    assert store.get_bytes(BUCKET, "empty.png", max_bytes=1000) == b""
    ranges = [headers.get("Range") for headers in server.object_gets()]
    assert ranges[:2] == ["bytes=0-1000", "bytes=0-1000"]
    assert ranges[2] == "bytes=0-1000" and ranges[-1] is None  # an empty object answers 416 to any range
    assert len(ranges) == 4


def test_a_cut_bounded_read_resumes_within_its_range(direct: S3ObjectStore, front) -> None:
    body = os.urandom(4000)
    direct.put_bytes(BUCKET, "a.png", body)
    server = front(lambda n, h: "truncate" if n == 0 else None)
    assert through(server, max_attempts=3).get_bytes(BUCKET, "a.png", max_bytes=5000) == body
    first, second = server.object_gets()
    assert first["Range"] == "bytes=0-5000" and second["Range"] == "bytes=2000-5000"
