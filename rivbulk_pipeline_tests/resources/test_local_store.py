"""The object store's S3 semantics.

The first half is one contract suite run against both stores (the local folder store, and
S3ObjectStore under moto.mock_aws); the second half covers what only the local layout has:
its key limits, the files on disk, atomic writes, hand-copied files, threads and processes.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import dagster as dg
import pytest
from moto import mock_aws

from rivbulk_pipeline.core.errors import InvalidKey, ObjectNotFound, TagLimitError
from rivbulk_pipeline.core.model import LISTING_SCHEMA
from rivbulk_pipeline.resources.aws import AwsClients
from rivbulk_pipeline.resources.object_store import LocalObjectStore, ObjectStoreResource, S3ObjectStore
from rivbulk_pipeline_tests.support.aws import fake_aws, md5

BUCKET = "images"

ODD_KEYS = [
    "plain.jpg",
    "with space/and+plus.jpg",
    "percent%20literal%2Fnot-a-slash.png",
    "ünïcödé/日本語 名前.jpeg",
    "deep/a/b/c/d/e.jpg",
    "quote'\"&=?#;.jpg",
    "trailing space .jpg",
    "emoji 😀.png",
    "back\\slash.jpg",
    "+leading plus",
]

# Sorted by UTF-8 bytes these differ from sorting by UTF-16 or by case: "x～" (U+FF5E)
# must come before "x😀" (U+1F600), "B" before "b-x", and a folder's keys after "b.x".
ORDER_KEYS = ["b~", "bé", "B", "b-x", "b.x", "b/x", "b/a/z", "b0/y", "ba", "x😀", "x\uff5e", "x/1", "x/2/3"]
ORDER_EXPECTED = ["B", "b-x", "b.x", "b/a/z", "b/x", "b0/y", "ba", "b~", "bé", "x/1", "x/2/3", "x\uff5e", "x😀"]


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


def put_all(store: ObjectStoreResource, keys: list[str]) -> None:
    for key in keys:
        store.put_bytes(BUCKET, key, key.encode())


# ------------------------------------------------------------------ the contract, both stores


def test_odd_keys_round_trip_through_put_get_head_list_and_tags(store: ObjectStoreResource) -> None:
    for i, key in enumerate(ODD_KEYS):
        body = f"image {i} ".encode() * 50
        assert store.put_bytes(BUCKET, key, body, content_type="image/jpeg") == md5(body)
        assert store.get_bytes(BUCKET, key) == body
        info = store.head(BUCKET, key)
        assert (info.key, info.size, info.etag, info.version_id) == (key, len(body), md5(body), None)
        assert info.last_modified.utcoffset() == timedelta(0)
        assert store.exists(BUCKET, key)
        store.put_tags(BUCKET, key, {"UserId": f"user-{i}", "Odd key + ü": "v a/l=ue"})
        assert store.get_tags(BUCKET, key) == {"UserId": f"user-{i}", "Odd key + ü": "v a/l=ue"}
    listed = list(store.list_objects(BUCKET))
    assert [o.key for o in listed] == sorted(ODD_KEYS, key=str.encode)
    assert all(o.etag == md5(store.get_bytes(BUCKET, o.key)) and o.bucket == BUCKET for o in listed)


def test_listing_in_batches_says_what_list_objects_says(store: ObjectStoreResource) -> None:
    put_all(store, ORDER_KEYS)
    batches = list(store.list_object_batches(BUCKET, prefix="b"))
    assert all(batch.schema == LISTING_SCHEMA for batch in batches)
    rows = [row for batch in batches for row in batch.to_pylist()]
    listed = list(store.list_objects(BUCKET, prefix="b"))
    assert [r["key"] for r in rows] == [k for k in ORDER_EXPECTED if k.startswith("b")]
    assert rows == [
        {
            "key": o.key,
            "size": o.size,
            "last_modified": o.last_modified,
            "etag": o.etag,
            "storage_class": o.storage_class,
        }
        for o in listed
    ]
    assert all(r["etag"] == md5(r["key"].encode()) and r["size"] == len(r["key"].encode()) for r in rows)


def test_listing_is_in_utf8_byte_order(store: ObjectStoreResource) -> None:
    put_all(store, ORDER_KEYS)
    assert sorted(ORDER_KEYS, key=str.encode) == ORDER_EXPECTED  # the test's own premise
    assert [o.key for o in store.list_objects(BUCKET)] == ORDER_EXPECTED


@pytest.mark.parametrize(
    ("prefix", "start_after"),
    [
        ("", ""), ("b", ""), ("b/", ""), ("b/a", ""), ("b/a/", ""), ("x", ""), ("nothing", ""),
        ("", "b/a"), ("", "b/a/z"), ("", "b."), ("", "b/"), ("", "b0/y"), ("b", "b/x"), ("x", "x/1"),
        ("", "zzz"), ("b/", "b/a/z"), ("b/", "a"), ("", "x\uff5e"),
    ],
)  # fmt: skip
def test_prefix_and_start_after_select_exactly_what_s3_would(
    store: ObjectStoreResource, prefix: str, start_after: str
) -> None:
    put_all(store, ORDER_KEYS)
    expected = [k for k in ORDER_EXPECTED if k.startswith(prefix) and k.encode() > start_after.encode()]
    assert [o.key for o in store.list_objects(BUCKET, prefix=prefix, start_after=start_after)] == expected


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("", ["b/", "b0/", "x/"]), ("b", ["b/", "b0/"]), ("b/", ["b/a/"]), ("x/", ["x/2/"]), ("b/a/", []), ("q", [])],
)
def test_list_prefixes_is_delimiter_slash(store: ObjectStoreResource, prefix: str, expected: list[str]) -> None:
    put_all(store, ORDER_KEYS)
    assert list(store.list_prefixes(BUCKET, prefix)) == expected


def test_missing_objects_and_buckets_raise_object_not_found_naming_them(store: ObjectStoreResource) -> None:
    for call in (store.get_bytes, store.head, store.get_tags):
        with pytest.raises(ObjectNotFound, match="s3://images/missing/key.jpg"):
            call(BUCKET, "missing/key.jpg")
    with pytest.raises(ObjectNotFound, match="s3://images/missing.jpg"):
        store.put_tags(BUCKET, "missing.jpg", {"A": "1"})
    with pytest.raises(ObjectNotFound, match="s3://no-such-bucket/k"):
        store.get_bytes("no-such-bucket", "k")
    with pytest.raises(ObjectNotFound, match="s3://no-such-bucket/"):
        list(store.list_objects("no-such-bucket"))
    assert not store.exists(BUCKET, "missing/key.jpg")


def test_put_tags_replaces_the_whole_set(store: ObjectStoreResource) -> None:
    store.put_bytes(BUCKET, "a.jpg", b"a")
    store.put_tags(BUCKET, "a.jpg", {"UserId": "u1", "Properties": "s3://p/u1.json"})
    store.put_tags(BUCKET, "a.jpg", {"Indexed": "true"})
    assert store.get_tags(BUCKET, "a.jpg") == {"Indexed": "true"}
    store.put_tags(BUCKET, "a.jpg", {})
    assert store.get_tags(BUCKET, "a.jpg") == {}


def test_merge_tags_keeps_other_tags_and_replaces_a_key_case_insensitively(store: ObjectStoreResource) -> None:
    store.put_bytes(BUCKET, "a.jpg", b"a")
    store.put_tags(BUCKET, "a.jpg", {"userid": "u1", "indexed": "false", "Camera": "x100"})
    written = store.merge_tags(BUCKET, "a.jpg", {"Indexed": "true"})
    assert written == {"userid": "u1", "Camera": "x100", "Indexed": "true"}
    assert store.get_tags(BUCKET, "a.jpg") == written


def test_more_than_ten_tags_is_refused_and_nothing_is_written(store: ObjectStoreResource) -> None:
    store.put_bytes(BUCKET, "full.jpg", b"f")
    ten = {f"k{i}": str(i) for i in range(10)}
    store.put_tags(BUCKET, "full.jpg", ten)
    with pytest.raises(TagLimitError, match=r"s3://images/full\.jpg: 11 tags"):
        store.merge_tags(BUCKET, "full.jpg", {"Indexed": "true"})
    with pytest.raises(TagLimitError, match="at most 10"):
        store.put_tags(BUCKET, "full.jpg", {**ten, "Indexed": "true"})
    with pytest.raises(TagLimitError, match="1..128"):
        store.put_tags(BUCKET, "full.jpg", {"K" * 129: "v"})
    assert store.get_tags(BUCKET, "full.jpg") == ten
    # Replacing an existing key keeps the count at 10: allowed.
    assert store.merge_tags(BUCKET, "full.jpg", {"K0": "new"})["K0"] == "new"


def test_overwriting_an_object_drops_its_tags(store: ObjectStoreResource) -> None:
    store.put_bytes(BUCKET, "a.jpg", b"old")
    store.put_tags(BUCKET, "a.jpg", {"Indexed": "true"})
    assert store.put_bytes(BUCKET, "a.jpg", b"new") == md5(b"new")
    assert store.get_tags(BUCKET, "a.jpg") == {}
    assert store.get_bytes(BUCKET, "a.jpg") == b"new"


def test_delete_removes_object_and_tags_and_a_missing_key_is_fine(store: ObjectStoreResource) -> None:
    store.put_bytes(BUCKET, "d/a.jpg", b"a")
    store.put_tags(BUCKET, "d/a.jpg", {"Indexed": "true"})
    store.delete(BUCKET, "d/a.jpg")
    assert not store.exists(BUCKET, "d/a.jpg")
    assert list(store.list_objects(BUCKET)) == []
    assert list(store.list_prefixes(BUCKET)) == []
    store.delete(BUCKET, "d/a.jpg")  # S3 answers 204 for a missing key
    store.put_bytes(BUCKET, "d/a.jpg", b"again")
    assert store.get_tags(BUCKET, "d/a.jpg") == {}


def test_upload_file_and_open_read_stream(store: ObjectStoreResource, tmp_path: Path) -> None:
    source = tmp_path / "report.csv.gz"
    data = os.urandom(300_000)
    source.write_bytes(data)
    assert store.upload_file(BUCKET, "inventory/data/1.csv.gz", str(source)) == md5(data)
    with store.open_read(BUCKET, "inventory/data/1.csv.gz") as f:
        parts = [f.read(65536) for _ in range(5)]
        assert f.read() == b""
    assert b"".join(parts) == data
    with pytest.raises(FileNotFoundError, match="not-there"):
        store.upload_file(BUCKET, "x", str(tmp_path / "not-there"))


def test_concurrent_merges_on_different_objects_lose_no_tag(store: ObjectStoreResource) -> None:
    keys = [f"users/{i:02d}.jpg" for i in range(12)]
    for key in keys:
        store.put_bytes(BUCKET, key, key.encode())
        store.put_tags(BUCKET, key, {"UserId": key})

    def tag_one(key: str) -> None:
        for n in range(4):
            store.merge_tags(BUCKET, key, {f"Step{n}": "done"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(tag_one, keys))
    for key in keys:
        assert store.get_tags(BUCKET, key) == {"UserId": key, **{f"Step{n}": "done" for n in range(4)}}


def test_either_store_binds_to_a_parameter_annotated_with_the_base(store: ObjectStoreResource) -> None:
    @dg.asset
    def stored_report(object_store: ObjectStoreResource) -> dg.MaterializeResult:
        etag = object_store.put_bytes(BUCKET, "reports/r.txt", b"report")
        keys = [o.key for o in object_store.list_objects(BUCKET, prefix="reports/")]
        return dg.MaterializeResult(metadata={"etag": etag, "keys": ",".join(keys)})

    result = dg.materialize([stored_report], resources={"object_store": store})
    assert result.success
    metadata = result.asset_materializations_for_node("stored_report")[0].metadata
    assert metadata["etag"].value == md5(b"report")
    assert metadata["keys"].value == "reports/r.txt"
    assert store.get_bytes(BUCKET, "reports/r.txt") == b"report"


# ------------------------------------------------------------------ the local layout only


@pytest.fixture
def local(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(root=str(tmp_path / "store"))


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "empty"),
        ("/leading.jpg", "empty segment"),
        ("trailing/", "empty segment"),
        ("a//b.jpg", "empty segment"),
        ("./a.jpg", "'.' segment"),
        ("a/../../escape.jpg", "'..' segment"),
        ("..", "'..' segment"),
        ("a/" + "x" * 256 + ".jpg", "over 255 bytes"),
        ("a/" + "é" * 128, "over 255 bytes"),  # 128 characters, 256 bytes
        ("/".join(["abc"] * 300), "1199 bytes"),
        ("nul\x00.jpg", "NUL"),
        ("bad\udc80surrogate.jpg", "not valid UTF-8"),
        ("a/.rivbulk-tmp-1234", "reserved"),
    ],
)
def test_keys_the_layout_cannot_hold_raise_invalid_key(
    local: LocalObjectStore, tmp_path: Path, key: str, why: str
) -> None:
    with pytest.raises(InvalidKey, match=why) as caught:
        local.put_bytes(BUCKET, key, b"x")
    assert caught.value.key == key and caught.value.bucket == BUCKET
    assert "local store cannot hold this key" in str(caught.value)
    with pytest.raises(InvalidKey):
        local.get_bytes(BUCKET, key)
    assert not local.exists(BUCKET, key)
    bucket_dir = tmp_path / "store" / BUCKET
    assert not bucket_dir.exists() or files_under(bucket_dir) == []
    assert not (tmp_path / "escape.jpg").exists()


def test_keys_at_the_limits_are_fine(local: LocalObjectStore) -> None:
    longest_segment = "é" * 127 + "x"  # 255 bytes
    longest_key = "/".join(["k" * 200] * 4 + ["k" * 220])
    assert len(longest_key) == 1024
    for key in (longest_segment, longest_key, "...", ".hidden", "a..b", "-"):
        local.put_bytes(BUCKET, key, b"ok")
        assert local.get_bytes(BUCKET, key) == b"ok"


@pytest.mark.parametrize("bucket", ["Images", "my_bucket", "ab", ".rivbulk-store.sqlite", "..", "a/b", "-x-"])
def test_bucket_names_follow_s3_rules(local: LocalObjectStore, bucket: str) -> None:
    with pytest.raises(InvalidKey, match="bucket name"):
        local.put_bytes(bucket, "k", b"x")


def test_a_key_cannot_be_both_an_object_and_a_folder(local: LocalObjectStore) -> None:
    local.put_bytes(BUCKET, "a/b", b"file")
    with pytest.raises(InvalidKey, match="already a folder") as caught:
        local.put_bytes(BUCKET, "a", b"x")
    assert caught.value.key == "a"
    with pytest.raises(InvalidKey, match="already an object"):
        local.put_bytes(BUCKET, "a/b/c", b"x")
    with pytest.raises(InvalidKey, match="already an object"):
        local.put_bytes(BUCKET, "a/b/c/d", b"x")
    with pytest.raises(ObjectNotFound):  # a folder is a prefix, not an object
        local.get_bytes(BUCKET, "a")
    assert [o.key for o in local.list_objects(BUCKET)] == ["a/b"]
    local.delete(BUCKET, "a/b")  # deleting the last object frees the name
    local.put_bytes(BUCKET, "a", b"now a file")
    assert local.get_bytes(BUCKET, "a") == b"now a file"


def test_objects_are_plain_files_and_metadata_stays_out_of_buckets(local: LocalObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "store"
    local.put_bytes(BUCKET, "users/ünï code+1.jpg", b"jpeg bytes")
    local.put_tags(BUCKET, "users/ünï code+1.jpg", {"UserId": "u1"})
    assert (root / BUCKET / "users" / "ünï code+1.jpg").read_bytes() == b"jpeg bytes"
    assert (root / ".rivbulk-store.sqlite").is_file()
    assert files_under(root / BUCKET) == ["users/ünï code+1.jpg"]
    assert [o.key for o in local.list_objects(BUCKET)] == ["users/ünï code+1.jpg"]


def test_writes_leave_no_temporary_files_even_when_they_fail(local: LocalObjectStore, tmp_path: Path) -> None:
    root = tmp_path / "store"
    for n in range(3):
        local.put_bytes(BUCKET, "a/x.jpg", b"v%d" % n)
    local.put_bytes(BUCKET, "a/y/z.jpg", b"z")
    with pytest.raises(InvalidKey):  # fails at the rename, after the temp file was written
        local.put_bytes(BUCKET, "a/y", b"collides")

    def failing_source() -> Iterator[bytes]:
        yield b"half of the new "
        raise OSError("source read failed")

    with pytest.raises(OSError, match="source read failed"):
        local._write(BUCKET, "a/x.jpg", failing_source())
    assert local.get_bytes(BUCKET, "a/x.jpg") == b"v2"  # the old object is whole
    assert files_under(root / BUCKET) == ["a/x.jpg", "a/y/z.jpg"]


def test_a_hand_copied_file_lists_with_the_md5_of_its_bytes(local: LocalObjectStore, tmp_path: Path) -> None:
    local.create_bucket(BUCKET)
    by_hand = tmp_path / "store" / BUCKET / "dropped" / "photo.jpg"
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(b"first content")
    [info] = local.list_objects(BUCKET)
    assert (info.key, info.etag, info.size) == ("dropped/photo.jpg", md5(b"first content"), 13)
    assert local.get_tags(BUCKET, "dropped/photo.jpg") == {}
    # Same size, same mtime (as `cp -p` would leave it): the cached ETag must still be renewed.
    stat_before = by_hand.stat()
    by_hand.write_bytes(b"other content")
    os.utime(by_hand, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))
    assert local.head(BUCKET, "dropped/photo.jpg").etag == md5(b"other content")
    assert [o.etag for o in local.list_objects(BUCKET)] == [md5(b"other content")]


def test_a_file_replaced_by_hand_does_not_inherit_the_old_tags(local: LocalObjectStore, tmp_path: Path) -> None:
    local.put_bytes(BUCKET, "u.jpg", b"old")
    local.put_tags(BUCKET, "u.jpg", {"Indexed": "true"})
    replacement = tmp_path / "replacement.jpg"
    replacement.write_bytes(b"new face")
    os.replace(replacement, tmp_path / "store" / BUCKET / "u.jpg")
    assert local.get_tags(BUCKET, "u.jpg") == {}
    assert local.head(BUCKET, "u.jpg").etag == md5(b"new face")


def test_files_that_cannot_be_objects_are_not_listed(local: LocalObjectStore, tmp_path: Path) -> None:
    local.put_bytes(BUCKET, "ok.jpg", b"ok")
    bucket_dir = tmp_path / "store" / BUCKET
    (bucket_dir / "empty-folder").mkdir()
    (bucket_dir / ".rivbulk-tmp-leftover").write_bytes(b"crash leftover")
    with open(os.path.join(os.fsencode(bucket_dir), b"latin1-\xe9.jpg"), "wb") as f:
        f.write(b"not utf-8 name")
    assert [o.key for o in local.list_objects(BUCKET)] == ["ok.jpg"]
    assert list(local.list_prefixes(BUCKET)) == []  # an empty folder holds no object


def test_listing_streams_folder_by_folder(local: LocalObjectStore, tmp_path: Path, monkeypatch) -> None:
    # The listing reads a page of files ahead (their ETags in one query, as S3 lists pages);
    # with one-file pages, the streaming beyond the page shows.
    monkeypatch.setattr("rivbulk_pipeline.resources.object_store.local_listing.PAGE_FILES", 1)
    local.put_bytes(BUCKET, "a/1.jpg", b"1")
    local.put_bytes(BUCKET, "b/old.jpg", b"2")
    listing = local.list_objects(BUCKET)
    assert next(listing).key == "a/1.jpg"
    # Folder b/ has not been read yet: what is there when the walk arrives is what is listed.
    local.delete(BUCKET, "b/old.jpg")
    local.put_bytes(BUCKET, "b/new.jpg", b"3")
    assert [o.key for o in listing] == ["b/new.jpg"]


def test_the_local_store_is_not_versioned(local: LocalObjectStore) -> None:
    local.put_bytes(BUCKET, "a.jpg", b"a")
    assert local.get_bytes(BUCKET, "a.jpg", version_id="null") == b"a"
    assert local.head(BUCKET, "a.jpg").version_id is None
    with pytest.raises(ObjectNotFound, match="not versioned"):
        local.get_bytes(BUCKET, "a.jpg", version_id="3HL4kqtJlcpXroDTDmJ")
    with pytest.raises(ObjectNotFound, match="not versioned"):
        local.put_tags(BUCKET, "a.jpg", {"A": "1"}, version_id="v2")


def test_concurrent_merges_on_one_object_from_threads_lose_no_tag(local: LocalObjectStore) -> None:
    local.put_bytes(BUCKET, "shared.jpg", b"s")
    barrier = threading.Barrier(9)

    def merge(n: int) -> None:
        barrier.wait()
        local.merge_tags(BUCKET, "shared.jpg", {f"T{n}": str(n)})

    with ThreadPoolExecutor(max_workers=9) as pool:
        list(pool.map(merge, range(9)))
    assert local.get_tags(BUCKET, "shared.jpg") == {f"T{n}": str(n) for n in range(9)}


def merge_in_a_child(store: LocalObjectStore, name: str) -> None:
    for n in range(4):
        store.merge_tags(BUCKET, "shared.jpg", {f"{name}{n}": "x"})


def test_concurrent_merges_from_processes_lose_no_tag(local: LocalObjectStore) -> None:
    local.put_bytes(BUCKET, "shared.jpg", b"s")
    local.put_tags(BUCKET, "shared.jpg", {"UserId": "u1"})
    # fork: the children inherit this thread's open SQLite connection and must not use it.
    fork = multiprocessing.get_context("fork")
    workers = [fork.Process(target=merge_in_a_child, args=(local, name)) for name in ("P", "Q")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    local.merge_tags(BUCKET, "shared.jpg", {"Parent": "still works"})
    expected = {"UserId": "u1", "Parent": "still works", **{f"{p}{n}": "x" for p in "PQ" for n in range(4)}}
    assert local.get_tags(BUCKET, "shared.jpg") == expected
