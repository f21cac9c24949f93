"""The local store's listing of hand-copied files: pages listed in the caller's thread and in
forked worker processes give the same rows, the MD5 of each file's bytes, and the ETag cache
they leave behind is right (read back from the store's SQLite file)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rivbulk_pipeline.core.model import LISTING_SCHEMA
from rivbulk_pipeline.resources.object_store import LocalObjectStore, local_listing

BUCKET = "images"


@pytest.fixture
def local(tmp_path: Path) -> LocalObjectStore:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    store.create_bucket(BUCKET)
    return store


@pytest.fixture
def in_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small pages, each listed by one of two worker processes."""
    monkeypatch.setattr(local_listing, "PAGE_FILES", 64)
    monkeypatch.setattr(local_listing, "POOL_MIN_FILES", 16)
    monkeypatch.setattr(local_listing, "PROCESSES", 2)


def copy_in(root: Path, files: dict[str, bytes]) -> None:
    """Files written the way a person copies them into the bucket folder: the store never saw them."""
    for key, body in files.items():
        path = root / BUCKET / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


def expected_rows(root: Path, keys: list[str]) -> list[dict]:
    """What S3 would list, computed from the files themselves."""
    rows = []
    for key in sorted(keys, key=str.encode):
        path = root / BUCKET / key
        st = path.stat()
        rows.append(
            {
                "key": key,
                "size": st.st_size,
                "last_modified": datetime(1970, 1, 1, tzinfo=timezone.utc)
                + timedelta(microseconds=st.st_mtime_ns // 1000),
                "etag": hashlib.md5(path.read_bytes()).hexdigest(),
                "storage_class": "STANDARD",
            }
        )
    return rows


def listed_rows(local: LocalObjectStore, **kw) -> list[dict]:
    batches = list(local.list_object_batches(BUCKET, **kw))
    assert all(b.schema == LISTING_SCHEMA and b.num_rows <= local_listing.PAGE_FILES for b in batches)
    return [row for batch in batches for row in batch.to_pylist()]


def cached_etags(root: Path) -> dict[str, str]:
    with sqlite3.connect(root / ".rivbulk-store.sqlite") as conn:
        return dict(conn.execute("SELECT key, etag FROM objects WHERE bucket = ?", (BUCKET,)))


def copy_many(root: Path, n: int) -> dict[str, bytes]:
    """`many_files(n)` copied into the bucket folder by hand."""
    files = many_files(n)
    copy_in(root, files)
    return files


def many_files(n: int) -> dict[str, bytes]:
    # several folders, pages that end mid-folder, sizes from empty to past one read (1 MiB)
    files = {f"people/{i % 7:02d}/{i:05d} é+.png": b"face %d " % i * (i % 50) for i in range(n)}
    files["big/one.bin"] = os.urandom(local_listing.READ_BYTES * 2 + 123)
    files["empty"] = b""
    return files


@pytest.mark.parametrize("where", ["thread", "processes"])
def test_never_listed_files_list_with_the_md5_of_their_bytes_and_are_cached(
    local: LocalObjectStore, tmp_path: Path, request: pytest.FixtureRequest, where: str
) -> None:
    if where == "processes":
        request.getfixturevalue("in_processes")
        assert threading.active_count() == 1  # else pages are listed in this thread (no fork)
    root = tmp_path / "store"
    files = copy_many(root, 300)
    expected = expected_rows(root, list(files))
    assert listed_rows(local) == expected
    assert cached_etags(root) == {r["key"]: r["etag"] for r in expected}
    assert listed_rows(local) == expected  # from the cache this time
    assert [r["key"] for r in listed_rows(local, prefix="people/03/", start_after="people/03/00100")] == [
        r["key"] for r in expected if r["key"].startswith("people/03/") and r["key"] > "people/03/00100"
    ]


def test_a_cached_etag_is_used_only_while_the_file_keeps_its_stat_signature(
    local: LocalObjectStore, tmp_path: Path, in_processes: None
) -> None:
    root = tmp_path / "store"
    copy_many(root, 100)
    listed_rows(local)
    # Plant a wrong ETag for one file: a listing that trusts the cache says it back...
    key = "people/01/00008 é+.png"
    with sqlite3.connect(root / ".rivbulk-store.sqlite") as conn:
        conn.execute("UPDATE objects SET etag = ? WHERE key = ?", ("f" * 32, key))
    assert {r["key"]: r["etag"] for r in listed_rows(local)}[key] == "f" * 32
    # ...until the file changes, even to the same size and mtime (as `cp -p` leaves it).
    path = root / BUCKET / key
    before = path.stat()
    path.write_bytes(b"X" * before.st_size)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    etag = {r["key"]: r["etag"] for r in listed_rows(local)}[key]
    assert etag == hashlib.md5(b"X" * before.st_size).hexdigest() == cached_etags(root)[key]


def test_files_that_cannot_be_objects_are_left_out_in_every_page(
    local: LocalObjectStore, tmp_path: Path, in_processes: None
) -> None:
    root = tmp_path / "store"
    files = copy_many(root, 100)
    bucket = os.fsencode(root / BUCKET)
    with open(os.path.join(bucket, b"people", b"00", b"latin1-\xe9.png"), "wb") as f:
        f.write(b"a name that is not UTF-8")
    deep = root / BUCKET / "/".join(["d" * 250] * 4)  # a 1,004-byte folder path: too long with a file in it
    deep.mkdir(parents=True)
    (deep / "long-enough-to-pass-1024-bytes.png").write_bytes(b"too long a key")
    (root / BUCKET / "people" / "02" / ".rivbulk-tmp-0123").write_bytes(b"a write in progress")
    os.mkfifo(root / BUCKET / "people" / "pipe")  # must not hang the listing
    os.symlink(root / BUCKET / "people", root / BUCKET / "link-to-folder")  # a folder link is not followed
    assert listed_rows(local) == expected_rows(root, list(files))


def test_a_listing_reads_pages_ahead_but_never_the_whole_bucket(
    local: LocalObjectStore, tmp_path: Path, in_processes: None
) -> None:
    root = tmp_path / "store"
    copy_in(root, {f"a/{i:04d}": b"a" for i in range(64 * 10)})
    copy_in(root, {"z/last": b"z"})
    listing = local.list_object_batches(BUCKET)
    first = next(listing)
    assert first.column("key")[0].as_py() == "a/0000"
    # pages ahead: at most PROCESSES + 1 of them, so the folder at the end is not read yet
    (root / BUCKET / "z" / "last").unlink()
    (root / BUCKET / "z" / "new").write_bytes(b"new")
    keys = [k for batch in listing for k in batch.column("key").to_pylist()]
    assert keys[-1] == "z/new" and len(keys) == 64 * 10 - 64 + 1


def test_listings_from_several_threads_at_once_agree(
    local: LocalObjectStore, tmp_path: Path, in_processes: None
) -> None:
    # With other threads running, pages are listed in each listing's own thread (no fork).
    root = tmp_path / "store"
    files = copy_many(root, 200)
    expected = expected_rows(root, list(files))
    results: list[list[dict]] = []

    def list_all() -> None:
        results.append(listed_rows(local))

    threads = [threading.Thread(target=list_all) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 3
    assert cached_etags(root) == {r["key"]: r["etag"] for r in expected}


def test_a_page_listed_by_a_worker_process_is_what_this_thread_lists(tmp_path: Path, in_processes: None) -> None:
    root = tmp_path / "store"
    copy_in(root, many_files(40))
    db = str(tmp_path / "cache.sqlite")
    keys = sorted(many_files(40), key=str.encode)
    paths = [os.fsencode(root / BUCKET / key) for key in keys]
    in_thread = local_listing._Workers()
    mine = in_thread.submit(db, BUCKET, keys[:10], paths[:10]).result()  # below POOL_MIN_FILES
    assert in_thread.pages_ahead == 0
    workers = local_listing._Workers()
    try:
        theirs = workers.submit(db, BUCKET, keys, paths).result()
        assert workers.pages_ahead == local_listing.PROCESSES + 1  # a pool was started
    finally:
        workers.close()
    sizes, mtimes, etags, denied = theirs
    assert denied is None and [s[:10] for s in (sizes, mtimes, etags)] == list(mine[:3])
    assert etags == [hashlib.md5((root / BUCKET / key).read_bytes()).hexdigest() for key in keys]
