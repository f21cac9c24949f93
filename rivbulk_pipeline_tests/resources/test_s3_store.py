"""S3ObjectStore over real HTTP: against moto's server through `endpoint_url`, and through a
small faulty front server (127.0.0.1) that answers S3 errors or cuts bodies, to prove the
retries, the resumed reads and the mapping of S3 error codes to our errors.

The semantic contract (keys, order, tags...) runs against S3 under moto.mock_aws in
test_local_store.py, in the same suite as the local store.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable

import boto3
import pytest
from moto import mock_aws

from rivbulk_pipeline.core.errors import AccessDenied, ObjectNotFound, StoreError, TransientStoreError
from rivbulk_pipeline.resources.aws import AwsClients
from rivbulk_pipeline.resources.object_store import S3ObjectStore
from rivbulk_pipeline_tests.support.aws import fake_aws, md5
from rivbulk_pipeline_tests.support.faulty_front import Action, FaultyFront, Plan, through

BUCKET = "images"

# ------------------------------------------------------------------ moto over HTTP


def test_round_trip_over_http_with_endpoint_url(direct: S3ObjectStore, moto_server: str, tmp_path: Path) -> None:
    key = "users/ü é+1%2F/face 1.jpg"
    assert direct.put_bytes(BUCKET, key, b"face", content_type="image/jpeg") == md5(b"face")
    assert direct.get_bytes(BUCKET, key) == b"face"
    assert direct.head(BUCKET, key).etag == md5(b"face")
    assert [o.key for o in direct.list_objects(BUCKET, prefix="users/")] == [key]
    assert list(direct.list_prefixes(BUCKET, "users/")) == ["users/ü é+1%2F/"]
    direct.put_tags(BUCKET, key, {"userid": "u1", "indexed": "false"})
    assert direct.merge_tags(BUCKET, key, {"Indexed": "true"}) == {"userid": "u1", "Indexed": "true"}
    # Another client on the same endpoint sees it: the store really went over HTTP to moto.
    other = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_server)
    tagging = other.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
    assert {t["Key"]: t["Value"] for t in tagging} == {"userid": "u1", "Indexed": "true"}
    direct.delete(BUCKET, key)
    assert not direct.exists(BUCKET, key)


def test_upload_file_goes_multipart_when_large(direct: S3ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "big.orc"
    data = os.urandom(9 * 1024 * 1024)  # over the 8 MiB multipart threshold: two parts
    source.write_bytes(data)
    etag = direct.upload_file(BUCKET, "inventory/data/big.orc", str(source))
    assert re.fullmatch(r"[0-9a-f]{32}-2", etag)
    assert direct.get_bytes(BUCKET, "inventory/data/big.orc") == data
    with pytest.raises(ObjectNotFound, match="s3://no-such-bucket/k.orc"):
        direct.upload_file("no-such-bucket", "k.orc", str(source))


def test_create_bucket_outside_us_east_1_is_idempotent(moto_server: str) -> None:
    store = S3ObjectStore(aws=AwsClients(region_name="eu-west-1", endpoint_url=moto_server))
    store.create_bucket("eu-images")
    store.create_bucket("eu-images")
    store.put_bytes("eu-images", "a", b"a")
    client = boto3.client("s3", region_name="eu-west-1", endpoint_url=moto_server)
    assert client.get_bucket_location(Bucket="eu-images")["LocationConstraint"] == "eu-west-1"


def test_tags_and_reads_honour_version_id(aws_env: None) -> None:
    with mock_aws():
        store = S3ObjectStore(aws=AwsClients(region_name="us-east-1"))
        store.create_bucket(BUCKET)
        boto3.client("s3", region_name="us-east-1").put_bucket_versioning(
            Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}
        )
        store.put_bytes(BUCKET, "u.jpg", b"first")
        v1 = store.head(BUCKET, "u.jpg").version_id
        store.put_bytes(BUCKET, "u.jpg", b"second")
        v2 = store.head(BUCKET, "u.jpg").version_id
        assert v1 and v2 and v1 != v2
        store.merge_tags(BUCKET, "u.jpg", {"Indexed": "true"}, version_id=v1)
        assert store.get_tags(BUCKET, "u.jpg", version_id=v1) == {"Indexed": "true"}
        assert store.get_tags(BUCKET, "u.jpg") == {}
        assert store.get_bytes(BUCKET, "u.jpg", version_id=v1) == b"first"
        assert store.head(BUCKET, "u.jpg", version_id=v1).version_id == v1
        with store.open_read(BUCKET, "u.jpg", version_id=v1) as f:
            assert f.read() == b"first"


# ------------------------------------------------------------------ faults from a front server


def test_slowdown_is_retried_until_it_succeeds(direct: S3ObjectStore, front: Callable[[Plan], FaultyFront]) -> None:
    direct.put_bytes(BUCKET, "a.jpg", b"a")
    direct.put_tags(BUCKET, "a.jpg", {"UserId": "u1"})
    server = front(lambda n, h: (503, "SlowDown") if n < 2 else None)
    assert through(server, max_attempts=4).get_tags(BUCKET, "a.jpg") == {"UserId": "u1"}
    assert [(method, path) for method, path, _ in server.requests] == [("GET", "/images/a.jpg?tagging")] * 3


def test_slowdown_past_max_attempts_is_a_transient_error(
    direct: S3ObjectStore, front: Callable[[Plan], FaultyFront]
) -> None:
    server = front(lambda n, h: (503, "SlowDown"))
    expected = r"s3://images/a\.jpg: GetObjectTagging: SlowDown \(HTTP 503\)"
    with pytest.raises(TransientStoreError, match=expected) as caught:
        through(server, max_attempts=2).get_tags(BUCKET, "a.jpg")
    assert caught.value.transient and caught.value.key == "a.jpg"
    assert len(server.requests) == 2


def test_internal_errors_are_retried_then_transient(
    direct: S3ObjectStore, front: Callable[[Plan], FaultyFront]
) -> None:
    direct.put_bytes(BUCKET, "a.jpg", b"a")
    flaky = front(lambda n, h: (500, "InternalError") if n < 2 else None)
    assert through(flaky, max_attempts=3).get_bytes(BUCKET, "a.jpg") == b"a"
    assert len(flaky.requests) == 3
    broken = front(lambda n, h: (500, "InternalError"))
    with pytest.raises(TransientStoreError, match=r"HeadObject: 500 \(HTTP 500\)"):  # HEAD: no body, no code
        through(broken, max_attempts=3).head(BUCKET, "a.jpg")
    assert len(broken.requests) == 3


def test_access_denied_is_mapped_and_not_retried(direct: S3ObjectStore, front: Callable[[Plan], FaultyFront]) -> None:
    server = front(lambda n, h: (403, "AccessDenied"))
    store = through(server, max_attempts=5)
    calls: list[Callable[[], object]] = [
        lambda: store.get_tags(BUCKET, "a.jpg"),
        lambda: store.get_bytes(BUCKET, "a.jpg"),
        lambda: store.head(BUCKET, "a.jpg"),  # HEAD: no body, the code is "403"
        lambda: store.put_bytes(BUCKET, "a.jpg", b"secret face"),
        lambda: list(store.list_objects(BUCKET, prefix="users/")),
    ]
    for call in calls:
        with pytest.raises(AccessDenied) as caught:
            call()
        assert str(caught.value).startswith("s3://images/")
        assert "secret face" not in str(caught.value)
    assert "s3://images/users/" in str(caught.value)  # a listing names bucket and prefix
    assert len(server.requests) == len(calls)


def test_other_errors_are_plain_store_errors(direct: S3ObjectStore, front: Callable[[Plan], FaultyFront]) -> None:
    server = front(lambda n, h: (400, "InvalidArgument"))
    with pytest.raises(StoreError, match="InvalidArgument") as caught:
        through(server, max_attempts=5).get_tags(BUCKET, "a.jpg")
    assert type(caught.value) is StoreError and not caught.value.transient
    assert len(server.requests) == 1


def test_a_refused_connection_is_a_transient_error(aws_env: None) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = S3ObjectStore(
        aws=AwsClients(region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2)
    )
    with pytest.raises(TransientStoreError, match="s3://images/a.jpg: EndpointConnectionError"):
        store.get_tags(BUCKET, "a.jpg")


def test_a_cut_body_resumes_with_a_ranged_get(direct: S3ObjectStore, front: Callable[[Plan], FaultyFront]) -> None:
    data = os.urandom(3 * 1024 * 1024)
    direct.put_bytes(BUCKET, "inventory/data/1.csv.gz", data)
    first_get = threading.Event()

    def cut_the_first_body(n: int, h: BaseHTTPRequestHandler) -> Action:
        if h.command == "GET" and not first_get.is_set():
            first_get.set()
            return "truncate"
        return None

    server = front(cut_the_first_body)
    with through(server, max_attempts=3).open_read(BUCKET, "inventory/data/1.csv.gz") as f:
        chunks = iter(lambda: f.read(256 * 1024), b"")
        assert b"".join(chunks) == data
    gets = server.object_gets()
    assert len(gets) == 2
    resumed_from = re.fullmatch(r"bytes=(\d+)-", gets[1]["Range"])
    assert resumed_from and 0 < int(resumed_from.group(1)) <= len(data) // 2
    assert gets[1]["If-Match"].strip('"') == md5(data)


def test_a_body_cut_every_time_ends_in_a_transient_error(
    direct: S3ObjectStore, front: Callable[[Plan], FaultyFront]
) -> None:
    direct.put_bytes(BUCKET, "d.csv.gz", os.urandom(2 * 1024 * 1024))
    server = front(lambda n, h: "hangup" if h.command == "GET" else None)
    with pytest.raises(TransientStoreError, match=r"s3://images/d\.csv\.gz: \w+Error, still failing after retries"):
        through(server, max_attempts=2).get_bytes(BUCKET, "d.csv.gz")
    assert len(server.object_gets()) == 2  # the first GET and one resume: no progress, give up


def test_a_body_cut_again_and_again_resumes_while_it_progresses(
    direct: S3ObjectStore, front: Callable[[Plan], FaultyFront]
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    direct.put_bytes(BUCKET, "d.csv.gz", data)
    server = front(lambda n, h: "truncate" if h.command == "GET" and n < 4 else None)
    assert through(server, max_attempts=2).get_bytes(BUCKET, "d.csv.gz") == data
    ranges = [headers.get("Range") for headers in server.object_gets()]
    assert len(ranges) == 5 and ranges[0] is None
    offsets = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:]]
    assert offsets == sorted(offsets) and offsets[0] > 0


def test_no_credentials_is_a_clear_store_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_aws(monkeypatch, tmp_path)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    store = S3ObjectStore(aws=AwsClients(region_name="us-east-1", endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(StoreError, match="no AWS credentials") as caught:
        store.head(BUCKET, "a.jpg")
    assert type(caught.value) is StoreError


def test_locations_are_s3_uris_with_a_console_link_on_aws_only(moto_server: str) -> None:
    on_aws = S3ObjectStore(aws=AwsClients(region_name="eu-west-1"))
    assert on_aws.location("faces", "dave smith/photo 1.png") == "s3://faces/dave smith/photo 1.png"
    assert on_aws.console_url("faces", "dave smith/photo 1.png") == (
        "https://console.aws.amazon.com/s3/object/faces?region=eu-west-1&prefix=dave%20smith/photo%201.png"
    )
    assert (
        S3ObjectStore(aws=AwsClients(region_name="eu-west-1", endpoint_url=moto_server)).console_url("faces", "a.png")
        is None
    )
