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
from rivbulk_pipeline_tests.support.aws import fake_aws, md5
from rivbulk_pipeline_tests.support.faulty_front import through

BUCKET = "images"


@pytest.fixture(params=["local", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ObjectStoreResource]:
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
    with pytest.raises(
        ObjectTooLarge, match=r"s3://images/over.json: the object is 101 bytes, over the 100-byte bound"
    ) as caught:
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


# ---------------------------------------------------------------- the steps


import random  # noqa: E402
import resource  # noqa: E402
import threading  # noqa: E402

import pyarrow as pa  # noqa: E402
from PIL import ImageFile  # noqa: E402

from benchmarks.hostile import HOSTILE, declared_png  # noqa: E402
from benchmarks.run import Sizes, build_lines, run_measurements  # noqa: E402
from rivbulk_pipeline.cli.demo import face_image  # noqa: E402
from rivbulk_pipeline.core.errors import ImageRejected  # noqa: E402
from rivbulk_pipeline.core.model import CANDIDATE_SCHEMA, QUALIFIED_SCHEMA  # noqa: E402
from rivbulk_pipeline.core.rules import images  # noqa: E402
from rivbulk_pipeline.core.rules.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, check_image  # noqa: E402
from rivbulk_pipeline.core.rules.ratelimit import RateLimiter  # noqa: E402
from rivbulk_pipeline.core.steps.indexing import IndexingPolicy, index_qualified  # noqa: E402
from rivbulk_pipeline.core.steps.qualify import QualifyStats, qualify_candidates  # noqa: E402
from rivbulk_pipeline.resources.gateway import LocalRegistryGateway  # noqa: E402
from rivbulk_pipeline.resources.history import SqliteImportHistory  # noqa: E402
from rivbulk_pipeline.resources.registration import S3TagRegistrationProvider  # noqa: E402

FACES = "faces"


def _sparse(path: Path, size: int, head: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


def _peak_rss_now() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.fixture
def faces(tmp_path: Path):
    store = LocalObjectStore(root=str(tmp_path / "store"))
    store.create_bucket(FACES)
    history = SqliteImportHistory(db_path=str(tmp_path / "history.sqlite"))
    provider = S3TagRegistrationProvider(store=store, allowed_property_buckets=[FACES])
    return tmp_path / "store" / FACES, store, history, provider


def _candidates(store: LocalObjectStore, keys: list[str], sizes: dict[str, int | None] | None = None) -> pa.RecordBatch:
    rows = []
    for key in keys:
        info = store.head(FACES, key)
        size = (sizes or {}).get(key, info.size)
        rows.append(dict(bucket=FACES, key=key, version_id=None, size=size, e_tag=info.etag))
    return pa.RecordBatch.from_pylist(rows, schema=CANDIDATE_SCHEMA)


def test_qualification_refuses_a_500_mb_properties_file_and_a_100_mb_image_without_reading_them(faces) -> None:
    root, store, history, provider = faces
    store.put_bytes(FACES, "people/ok.png", face_image(1))
    store.put_tags(FACES, "people/ok.png", {"UserId": "ok"})
    store.put_bytes(FACES, "people/props.png", face_image(2))
    store.put_tags(FACES, "people/props.png", {"UserId": "props", "Properties": f"s3://{FACES}/props/big.json"})
    _sparse(root / "props" / "big.json", 500 * 1024 * 1024, b'{"name": "')
    _sparse(root / "people" / "huge.png", 100 * 1024 * 1024, b"\x89PNG\r\n\x1a\n")
    store.put_tags(FACES, "people/huge.png", {"UserId": "huge"})
    before = _peak_rss_now()
    stats = QualifyStats()
    [batch] = list(
        qualify_candidates(
            [_candidates(store, ["people/ok.png", "people/props.png", "people/huge.png"])],
            store=store,
            provider=provider,
            history=history,
            stats=stats,
        )
    )
    rows = {r["key"]: r for r in batch.to_pylist()}
    assert rows["people/ok.png"]["qualified"]
    assert rows["people/props.png"]["reason"] == "bad_properties"
    assert "properties file is 524288000 bytes, over the 65536-byte bound" in rows["people/props.png"]["detail"]
    assert rows["people/huge.png"]["reason"] == "too_large"
    assert (
        "104,857,600 bytes (the inventory's Size), over the 5,242,880-byte limit" in rows["people/huge.png"]["detail"]
    )
    assert stats.tag_reads == 2  # the image too large by its listed size is not even asked for its tags
    assert _peak_rss_now() - before < 50_000_000  # neither was read


def test_indexing_refuses_an_image_over_5_mb_from_its_size_when_the_inventory_gave_none(faces) -> None:
    root, store, history, provider = faces
    _sparse(root / "people" / "huge.png", 100 * 1024 * 1024, b"\x89PNG\r\n\x1a\n")
    store.put_bytes(FACES, "people/ok.png", face_image(3))
    candidates = _candidates(store, ["people/huge.png", "people/ok.png"], sizes={"people/huge.png": None})
    qualified = pa.RecordBatch.from_pylist(
        [dict(row, qualified=True, reason="qualified", detail="", user_id=row["key"][7:-4], properties_ref=None)
         for row in candidates.to_pylist()], schema=QUALIFIED_SCHEMA)  # fmt: skip
    before = _peak_rss_now()
    out = {
        r["key"]: r
        for b in index_qualified(
            [qualified],
            store=store,
            provider=provider,
            gateway=LocalRegistryGateway(db_path=str(root.parent.parent / "registry.sqlite")),
            history=history,
            limiter=RateLimiter(1000.0),
            policy=IndexingPolicy(owner="run-1", concurrency=2, rng=random.Random(1)),
        )
        for r in b.to_pylist()
    }
    assert out["people/ok.png"]["outcome"] == "indexed"
    huge = out["people/huge.png"]
    assert huge["outcome"] == "failed_permanent" and huge["attempts"] == 0
    assert huge["reason"].startswith(
        "too_large: s3://faces/people/huge.png: the object is 104,857,600 bytes, over the 5,242,880-byte bound"
    )
    assert _peak_rss_now() - before < 50_000_000


def test_a_png_declaring_88_megapixels_is_refused_from_its_header_before_decoding() -> None:
    bomb = declared_png(11_000, 8_000)
    assert len(bomb) < 400_000  # about 340 KB that would decode to 352 MB
    before = _peak_rss_now()
    with pytest.raises(ImageRejected) as caught:
        check_image(bomb, "s3://faces/bomb.png")
    assert caught.value.reason_code == "too_large"
    assert "11000x8000 px (88,000,000 pixels), over the 41,943,040-pixel bound" in caught.value.detail
    assert _peak_rss_now() - before < 50_000_000  # not decoded
    # the bound is what a 5 MB photograph can hold at 1 bit per pixel; an image just under it decodes
    assert MAX_IMAGE_PIXELS == MAX_IMAGE_BYTES * 8
    assert check_image(declared_png(6_400, 6_400), "s3://faces/large.png").width == 6_400  # 41.0 M pixels


def test_no_more_images_decode_at_once_than_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight threads check images at once; a spy on Pillow's real decode counts how many are inside it."""
    inside, most, lock = [0], [0], threading.Lock()
    real_load = ImageFile.ImageFile.load

    def counting_load(self):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return real_load(self)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    picture = declared_png(3_000, 3_000)  # 9 M pixels: a decode lasts long enough to overlap
    threads = [threading.Thread(target=check_image, args=(picture, f"s3://faces/{n}.png")) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == images.MAX_CONCURRENT_DECODES == 2


def test_the_hostile_date_benchmark_finishes_each_step_and_refuses_each_object_with_its_reason(tmp_path: Path) -> None:
    r = run_measurements(Sizes(hostile_normal=3), ["hostile"], str(tmp_path), log=lambda m: None)["hostile"]
    assert all(step["success"] for step in r["steps"].values())
    assert {key: r["outcomes"][key] for key in HOSTILE} == {key: outcome for key, (_, outcome) in HOSTILE.items()}
    assert sum(outcome == "index:indexed" for outcome in r["outcomes"].values()) == 3
    for step in ("qualified_objects", "indexed_users"):
        assert 50_000_000 < r["steps"][step]["peak_rss_bytes"]
    assert [line.passed for line in build_lines({"hostile": r})] == [True, True, True]
