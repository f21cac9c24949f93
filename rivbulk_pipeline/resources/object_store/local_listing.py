"""Listing a local bucket folder in LISTING_SCHEMA batches, fast enough for millions of files.

The main thread walks the folders in key order and builds the batches; the per-file work
(a stat, or an MD5 when the cached ETag is missing or stale, and caching it) runs in worker
processes page by page, several pages ahead. Processes, not threads: MD5 of a file under
2 KB holds the GIL, and so does the Python around each system call, so threads take turns.
They are forked (nothing to import: a spawned worker would import Dagster again), and only
from a process with no other thread running.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import multiprocessing
import os
import sqlite3
import stat
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...core.errors import AccessDenied
from ...core.model import LISTING_SCHEMA
from ..sqlite_threads import ThreadConnections, use_wal

TMP_PREFIX = ".rivbulk-tmp-"
MAX_KEY_BYTES = 1024
PAGE_FILES = 8192  # files per page: one ETag-cache query, at most one transaction, one batch
POOL_MIN_FILES = 1024  # a page this small is listed in the caller's thread (no processes for a few files)
PROCESSES = min(4, os.cpu_count() or 1)  # one per core: more were slower with the files in the page cache
READ_BYTES = 1 << 20

# `objects` caches ETags (valid while the file's stat signature is unchanged); `tags` holds
# each object's tag set with the inode it was written for, so tags never outlive the file
# they belong to, even when a file is replaced by hand or a crash interrupts a write.
SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, ino INTEGER NOT NULL, etag TEXT NOT NULL,
    PRIMARY KEY (bucket, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags (
    bucket TEXT NOT NULL, key TEXT NOT NULL, ino INTEGER NOT NULL, tags TEXT NOT NULL,
    PRIMARY KEY (bucket, key)) WITHOUT ROWID;
"""


def connect(db_path: str) -> sqlite3.Connection:
    """A connection to the store's SQLite file (tags and the ETag cache), its tables created."""
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)  # see sqlite_threads
    conn.execute("PRAGMA busy_timeout = 30000")
    use_wal(conn, 30)
    # NORMAL in WAL mode: a commit survives a killed process; a power cut may lose the
    # last tag writes (object bytes are fsynced by the store's writes regardless).
    conn.execute("PRAGMA synchronous = NORMAL")
    # A small page cache: a step's 32 tag-reading threads each hold a connection, and the
    # operating system caches the file anyway (2 MB each held 60 MB more at 10M objects).
    conn.execute("PRAGMA cache_size = -256")
    conn.executescript(SCHEMA)
    return conn


_page_connections: dict[str, ThreadConnections] = {}  # the page lister's, per database file


def _db(db_path: str) -> sqlite3.Connection:
    return _page_connections.setdefault(db_path, ThreadConnections()).get(lambda: connect(db_path))


def signature(st: os.stat_result) -> tuple[int, int, int, int]:
    # ctime and inode catch a same-size replacement that kept the mtime (cp -p, rsync -t).
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def walk(
    folder: bytes, key_prefix: bytes, prefix: bytes, start_after: bytes
) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """(keys, paths) of the files under `folder` with key > start_after and starting with
    prefix, in byte order of keys, a run of one folder's files at a time. A folder sorts as
    its name + '/', which puts its keys exactly where a global byte sort would. Memory: one
    sorted folder listing per level of the current path, never the whole tree."""
    try:
        with os.scandir(folder) as it:
            names = sorted(
                e.name + b"/" if e.is_dir(follow_symlinks=False) else e.name
                for e in it
                if not e.name.startswith(TMP_PREFIX.encode())
            )
    except (FileNotFoundError, NotADirectoryError):
        return
    base = folder + b"/"
    # Every key here is in range when the folder is under the prefix and after start_after.
    inside = key_prefix.startswith(prefix) and (not start_after or start_after < key_prefix)
    keys: list[bytes] = []
    paths: list[bytes] = []
    for name in names:
        key = key_prefix + name
        if not inside and key > prefix and not key.startswith(prefix):
            break  # sorted: every later entry is past the prefix too
        if name[-1:] == b"/":
            if not inside:
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if start_after > key and not start_after.startswith(key):
                    continue  # every key in this folder sorts before start_after
            if keys:
                yield keys, paths
                keys, paths = [], []
            yield from walk(base + name[:-1], key, prefix, start_after)
        elif inside or (key.startswith(prefix) and key > start_after):
            keys.append(key)
            paths.append(base + name)
    if keys:
        yield keys, paths


def _pages(runs: Iterator[tuple[list[bytes], list[bytes]]], size: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
    keys: list[bytes] = []
    paths: list[bytes] = []
    for run_keys, run_paths in runs:
        keys += run_keys
        paths += run_paths
        while len(keys) >= size:
            yield keys[:size], paths[:size]
            keys, paths = keys[size:], paths[size:]
    if keys:
        yield keys, paths


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _s3_keys(keys: list[bytes], paths: list[bytes]) -> tuple[pa.StringArray, list[str], list[bytes]]:
    """The names that can be S3 keys (valid UTF-8, at most 1024 bytes), checked in one pass,
    as an array and as Python strings. A name from a folder listing is never empty, '.',
    '..', over 255 bytes or holding a NUL, and the walk leaves out temp files: the store's
    other key rules hold already."""
    raw = pa.array(keys, pa.binary())
    keep = np.asarray(pc.binary_length(raw)) <= MAX_KEY_BYTES
    try:
        text: Optional[pa.StringArray] = raw.cast(pa.string())
    except pa.ArrowInvalid:  # a hand-made file whose name is not UTF-8 cannot be an S3 key
        keep &= np.array([_is_utf8(key) for key in keys], dtype=bool)
        text = None
    if text is None or not keep.all():
        paths = [path for path, ok in zip(paths, keep) if ok]
        text = raw.filter(pa.array(keep)).cast(pa.string())
    return text, text.to_pylist(), paths


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang the listing
_NOATIME = getattr(os, "O_NOATIME", 0)  # Linux: reading a file for its ETag is no access to it


def _open(path: bytes) -> int:
    global _NOATIME
    if _NOATIME:
        try:
            return os.open(path, _OPEN_FLAGS | _NOATIME)
        except PermissionError as error:
            if error.errno != errno.EPERM:
                raise  # EACCES: the file may not be read at all
            _NOATIME = 0  # only a file's owner may skip the access time: not this process
    return os.open(path, _OPEN_FLAGS)


def _hash(path: bytes) -> Optional[tuple[str, tuple[int, int, int, int], bool]]:
    """(MD5 of the file, its stat signature, whether it kept that signature while it was
    read); None when it is gone or not a regular file. Low-level calls: for the small files
    of a test bucket, `open()`'s layers cost more than the hashing."""
    try:
        fd = _open(path)
    except (FileNotFoundError, NotADirectoryError):
        return None  # deleted while listing, as S3 would no longer list it
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None  # a folder is a prefix, not an object
        md5 = hashlib.md5(usedforsecurity=False)
        # A small file in one read of one byte more than its size: a short read past the size
        # the stat gave is the end, so no second call is needed to find it.
        want, total = min(st.st_size + 1, READ_BYTES), 0
        while block := os.read(fd, want):
            md5.update(block)
            total += len(block)
            if len(block) < want and total >= st.st_size:
                break
            want = READ_BYTES
        after = signature(os.fstat(fd))
    finally:
        os.close(fd)
    # the signature is keyed by inode: a file renamed over this path is hashed anew next time
    return md5.hexdigest(), after, after == signature(st)


def list_page(db_path: str, bucket: str, keys: list[str], paths: list[bytes]) -> tuple[list, list, list, Optional[int]]:
    """(sizes, mtime_ns, ETags, index of a file it may not read) of a page of files in key
    order; the ETag is None for a file gone or not a file. Cached ETags are used where the
    file's stat signature is the cached one; the others are hashed and cached in one transaction."""
    conn = _db(db_path)
    # Keys come in byte order, which is SQLite's order for TEXT: one range of the primary key.
    cached = {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT key, size, mtime_ns, ctime_ns, ino, etag FROM objects WHERE bucket = ? AND key BETWEEN ? AND ?",
            (bucket, keys[0], keys[-1]),
        )
    }
    sizes, mtimes, etags, fresh = [], [], [], []
    for i, (key, path) in enumerate(zip(keys, paths)):
        hit = cached.get(key)
        if hit is not None:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                st = None  # deleted while listing
            if st is not None and signature(st) == hit[:4] and stat.S_ISREG(st.st_mode):
                sizes.append(st.st_size), mtimes.append(st.st_mtime_ns), etags.append(hit[4])
                continue
        try:
            hashed = _hash(path)
        except PermissionError:
            return sizes, mtimes, etags, i
        if hashed is None:
            sizes.append(0), mtimes.append(0), etags.append(None)
            continue
        etag, sig, unchanged = hashed
        if unchanged:  # not rewritten while hashing: cacheable
            fresh.append((bucket, key, *sig, etag))
        sizes.append(sig[0]), mtimes.append(sig[1]), etags.append(etag)
    if fresh:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?)", fresh)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return sizes, mtimes, etags, None


class _Workers:
    """Where pages are listed: in the caller's thread until a page is large enough to be worth
    a process, then in a pool of forked processes (kept for the rest of the listing)."""

    def __init__(self) -> None:
        self._pool: Optional[ProcessPoolExecutor] = None

    @property
    def pages_ahead(self) -> int:
        """Pages submitted before the oldest is waited for: enough to keep every process busy."""
        return PROCESSES + 1 if self._pool else 0

    def submit(self, db_path: str, bucket: str, keys: list[str], paths: list[bytes]) -> Future:
        # Forking is safe only while no other thread can hold a lock the child needs (SQLite's
        # mutexes): a listing from a process running other threads (a Dagster run, a server)
        # lists its pages in its own thread. The pool's own threads start after its forks.
        if self._pool is None and (len(keys) < POOL_MIN_FILES or PROCESSES < 2 or threading.active_count() > 1):
            done: Future = Future()
            done.set_result(list_page(db_path, bucket, keys, paths))
            return done
        if self._pool is None:
            self._pool = ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("fork"))
        return self._pool.submit(list_page, db_path, bucket, keys, paths)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _batch(bucket: str, keys: pa.StringArray, key_list: list[str], listed: Future) -> pa.RecordBatch:
    sizes, mtimes, etags, denied = listed.result()
    if denied is not None:
        raise AccessDenied(bucket, key_list[denied], "the file cannot be read (permission denied)")
    etag_array = pa.array(etags, pa.string())
    batch = pa.RecordBatch.from_arrays(
        [
            keys,
            pa.array(sizes, pa.int64()),
            # nanoseconds floored to microseconds, as the store's HEAD does
            pa.array(np.array(mtimes, dtype=np.int64) // 1000).cast(LISTING_SCHEMA.field("last_modified").type),
            etag_array,
            pa.repeat(pa.scalar("STANDARD", pa.string()), len(keys)),
        ],
        schema=LISTING_SCHEMA,
    )
    return batch.filter(etag_array.is_valid()) if etag_array.null_count else batch


def list_batches(
    db_path: str, bucket: str, runs: Iterator[tuple[list[bytes], list[bytes]]]
) -> Iterator[pa.RecordBatch]:
    """The files of `runs` (from `walk`) in LISTING_SCHEMA batches of at most PAGE_FILES, in key order."""
    workers, ahead = _Workers(), collections.deque()
    try:
        for keys, paths in _pages(runs, PAGE_FILES):
            key_array, key_list, paths = _s3_keys(keys, paths)
            if key_list:
                ahead.append((key_array, key_list, workers.submit(db_path, bucket, key_list, paths)))
            while ahead and (len(ahead) > workers.pages_ahead or ahead[0][2].done()):
                batch = _batch(bucket, *ahead.popleft())
                if batch.num_rows:
                    yield batch
        while ahead:
            batch = _batch(bucket, *ahead.popleft())
            if batch.num_rows:
                yield batch
    finally:
        workers.close()
