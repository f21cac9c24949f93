"""A local folder with S3's semantics: buckets are folders, tags and ETags in SQLite."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import secrets
import sqlite3
import stat
from datetime import datetime, timedelta, timezone
from typing import BinaryIO, ContextManager, Iterable, Iterator, Mapping, Optional

import pyarrow as pa
from pydantic import Field, PrivateAttr

from ...core.errors import (
    AccessDenied,
    InvalidKey,
    ObjectChanged,
    ObjectNotFound,
    ObjectTooLarge,
)
from ...core.model import ObjectInfo, ObjectRef, listed_objects
from ...core.rules.tags import merge_tag_sets, validate_tag_set
from ..sqlite_threads import ThreadConnections
from .base import CHUNK_BYTES, ObjectStoreResource
from .local_listing import (
    MAX_KEY_BYTES,
    TMP_PREFIX,
    connect,
    list_batches,
    signature,
    walk,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_DB_NAME = ".rivbulk-store.sqlite"
MAX_SEGMENT_BYTES = 255


def _key_problem(key: str) -> Optional[str]:
    """Why this key cannot be a path under a bucket folder, or None when it can."""
    if not key:
        return "the key is empty"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "the key is not valid UTF-8"
    if len(encoded) > MAX_KEY_BYTES:
        return f"the key is {len(encoded)} bytes of UTF-8; S3 keys are at most {MAX_KEY_BYTES}"
    if "\x00" in key:
        return "a NUL character cannot be part of a file name"
    for segment in key.split("/"):
        if not segment:
            return "an empty segment ('//', or a leading or trailing '/') has no file name on disk"
        if segment in (".", ".."):
            return f"a {segment!r} segment names a folder on disk, not a file"
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            return f"a segment over {MAX_SEGMENT_BYTES} bytes is longer than a file name can be"
        if segment.startswith(TMP_PREFIX):
            return f"segments starting with {TMP_PREFIX!r} are reserved for temporary files"
    return None


def _utc(st: os.stat_result) -> datetime:
    # from the integer nanoseconds, floored to microseconds (the float st_mtime rounds)
    return _EPOCH + timedelta(microseconds=st.st_mtime_ns // 1000)


def _md5_file(path: str | bytes) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _fsync_dir(folder: str) -> None:
    """Make a rename durable: the folder entry must reach the disk too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalObjectStore(ObjectStoreResource):
    """S3's semantics on a local folder: `<root>/<bucket>/<key>` are the objects' plain files,
    so a person can look at them; tags and cached ETags live in `<root>/.rivbulk-store.sqlite`.
    Not versioned: version ids are always None (or S3's "null")."""

    root: str = Field(description="Folder holding one sub-folder per bucket.")

    _threads: ThreadConnections = PrivateAttr(default_factory=ThreadConnections)
    _real_root_path: Optional[str] = PrivateAttr(default=None)
    # Folders found to be real folders inside the root, by path: their (device, inode) then.
    _real_folders: dict[str, tuple[int, int]] = PrivateAttr(default_factory=dict)

    # ---- plumbing ----

    @property
    def _root(self) -> str:
        return os.path.abspath(os.path.expanduser(self.root))

    @property
    def _real_root(self) -> str:
        """The root with its own symbolic links resolved (the root may itself be a link)."""
        if self._real_root_path is None:
            self._real_root_path = os.path.realpath(self._root)
        return self._real_root_path

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections must not cross threads or forks)."""
        return self._threads.get(self._connect)

    def _connect(self) -> sqlite3.Connection:
        os.makedirs(self._root, exist_ok=True)
        return connect(os.path.join(self._root, _DB_NAME))

    # No Dagster teardown: it would make every caller of build_sensor_context use a `with`.
    # Finished threads' connections close as new ones open; the rest go with the resource.
    def close(self) -> None:
        """Close this store's SQLite connections, whichever threads opened them."""
        self._threads.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; IMMEDIATE takes the write lock up front, so a
        read-modify-write inside it cannot interleave with another writer."""
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _bucket_dir(self, bucket: str) -> str:
        if not isinstance(bucket, str) or not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
            raise InvalidKey(
                str(bucket),
                "",
                "a bucket name must be 3-63 characters of a-z, 0-9, '.' and '-', "
                "starting and ending with a letter or digit (S3's rule)",
            )
        return os.path.join(self._root, bucket)

    def _path(self, bucket: str, key: str) -> str:
        folder = self._bucket_dir(bucket)
        problem = _key_problem(key)
        if problem:
            raise InvalidKey(bucket, key, f"the local store cannot hold this key: {problem}")
        path = os.path.join(folder, *key.split("/"))
        # A symbolic link anywhere below the root (the bucket's folder, a key's folder, the file
        # itself) could lead outside the store, or into another bucket: such a path is refused.
        if not self._confined(path, os.path.join(self._real_root, bucket, *key.split("/"))):
            raise AccessDenied(
                bucket,
                key,
                "the path goes through a symbolic link; the local store reads and writes only its own files",
            )
        return path

    def _confined(self, path: str, real: str) -> bool:
        """Whether `path` leads to `real` without a symbolic link on the way.

        realpath looks at every folder on the way, each time (a tenth of a daily run's time, with
        the GIL handed over at every look). A folder once resolved is remembered with its (device,
        inode): one lstat of it then shows it is still that folder, since a link put in its place,
        or in place of any folder above it, leads to another inode. The last part is an lstat.
        """
        folder = os.path.dirname(path)
        try:
            seen = os.lstat(folder)
        except OSError:  # not there yet (a first write into it): resolve the whole path
            return os.path.realpath(path) == real
        identity = (seen.st_dev, seen.st_ino)
        if self._real_folders.get(folder) != identity:
            if stat.S_ISLNK(seen.st_mode) or os.path.realpath(folder) != os.path.dirname(real):
                return False
            if len(self._real_folders) > 65_536:  # bounded: a bucket has many folders
                self._real_folders.clear()
            self._real_folders[folder] = identity
        try:
            return not stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:  # not there (yet): nothing to follow
            return True

    def _missing(self, bucket: str, key: str) -> ObjectNotFound:
        if not os.path.isdir(os.path.join(self._root, bucket)):
            return ObjectNotFound(bucket, key, "no such bucket")
        return ObjectNotFound(bucket, key, "no such key")

    @staticmethod
    def _check_version(bucket: str, key: str, version_id: Optional[str]) -> None:
        if version_id not in (None, "null"):
            raise ObjectNotFound(bucket, key, "no such version: the local store is not versioned")

    def _stat(self, bucket: str, key: str) -> tuple[str, os.stat_result]:
        path = self._path(bucket, key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(bucket, key) from None
        except PermissionError:
            raise AccessDenied(bucket, key, "the file cannot be read (permission denied)") from None
        if not stat.S_ISREG(st.st_mode):  # a folder is a prefix, not an object
            raise self._missing(bucket, key)
        return path, st

    def _etag(self, bucket: str, key: str, path: str | bytes, st: os.stat_result) -> str:
        """MD5 of the bytes, cached per stat signature, so files copied in by hand list right."""
        conn = self._db()
        row = conn.execute(
            "SELECT size, mtime_ns, ctime_ns, ino, etag FROM objects WHERE bucket = ? AND key = ?",
            (bucket, key),
        ).fetchone()
        if row and tuple(row[:4]) == signature(st):
            return row[4]
        try:
            etag = _md5_file(path)
            unchanged = signature(os.stat(path)) == signature(st)
        except FileNotFoundError:  # deleted meanwhile
            raise self._missing(bucket, key) from None
        if unchanged:  # not rewritten while hashing: cacheable
            conn.execute(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?)",
                (bucket, key, *signature(st), etag),
            )
        return etag

    @staticmethod
    def _read_tags(conn: sqlite3.Connection, bucket: str, key: str, st: os.stat_result) -> dict[str, str]:
        row = conn.execute("SELECT ino, tags FROM tags WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
        # Tags written for another inode belonged to an earlier file at this key.
        return json.loads(row[1]) if row and row[0] == st.st_ino else {}

    def _write(self, bucket: str, key: str, chunks: Iterable[bytes]) -> str:
        """Temp file in the target folder, fsync, rename over the key: readers see the old
        bytes or the new, never a part. The rename and the tag drop share one transaction."""
        path = self._path(bucket, key)
        folder = os.path.dirname(path)
        for attempt in range(3):
            try:
                os.makedirs(folder, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise InvalidKey(
                    bucket, key, "a leading part of this key is already an object; it cannot also be a folder"
                ) from None
            except PermissionError:
                raise AccessDenied(bucket, key, "the folder cannot be written (permission denied)") from None
            tmp = os.path.join(folder, TMP_PREFIX + secrets.token_hex(8))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                break
            except FileNotFoundError:  # a concurrent delete pruned the empty folder: again
                if attempt == 2:
                    raise
            except PermissionError:
                raise AccessDenied(bucket, key, "the folder cannot be written (permission denied)") from None
        try:
            md5 = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    md5.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            etag = md5.hexdigest()
            with self._transaction() as conn:
                try:
                    os.replace(tmp, path)
                except IsADirectoryError:
                    raise InvalidKey(
                        bucket, key, "this key is already a folder of other objects; it cannot also be a file"
                    ) from None
                st = os.stat(path)
                conn.execute("DELETE FROM tags WHERE bucket = ? AND key = ?", (bucket, key))  # S3: PUT drops tags
                conn.execute(
                    "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (bucket, key, *signature(st), etag),
                )
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(folder)
        return etag

    def _existing_bucket(self, bucket: str, prefix: str) -> str:
        folder = self._bucket_dir(bucket)
        if not os.path.isdir(folder):
            raise ObjectNotFound(bucket, prefix, "no such bucket")
        return folder

    def _walk(self, bucket: str, prefix: str, start_after: str) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Runs of (keys, paths) of the files under prefix, in key byte order (`local_listing.walk`)."""
        folder = self._existing_bucket(bucket, prefix)  # raises now for a missing bucket
        # Start in the deepest folder the prefix names instead of scanning the whole bucket.
        folder_part = prefix[: prefix.rfind("/") + 1]
        if folder_part:
            if _key_problem(folder_part[:-1]):
                return iter(())  # no object key can be under such a prefix here
            folder = os.path.join(folder, *folder_part[:-1].split("/"))
        return walk(os.fsencode(folder), folder_part.encode(), prefix.encode(), start_after.encode())

    def _has_objects(self, bucket: str, prefix: str) -> bool:
        """Whether an object lives under prefix (nothing hashed: a stat at most per file)."""
        for keys, paths in self._walk(bucket, prefix, ""):
            for key_bytes, path in zip(keys, paths):
                try:
                    key = key_bytes.decode("utf-8")
                    if not _key_problem(key) and stat.S_ISREG(os.stat(path).st_mode):
                        return True
                except (UnicodeDecodeError, OSError):
                    continue  # not an S3 key, or deleted meanwhile
        return False

    # ---- the interface ----

    def location(self, bucket: str, key: str) -> str:
        return self._path(bucket, key)

    def create_bucket(self, bucket: str) -> None:
        os.makedirs(self._bucket_dir(bucket), exist_ok=True)

    def get_bytes(
        self,
        bucket: str,
        key: str,
        version_id: Optional[str] = None,
        if_match: Optional[str] = None,
        max_bytes: Optional[int] = None,
    ) -> bytes:
        with self.open_read(bucket, key, version_id) as f:
            if max_bytes is None:
                body = f.read()
            else:
                size = os.fstat(f.fileno()).st_size  # the opened file's own size: refused unread
                if size > max_bytes:
                    raise ObjectTooLarge(bucket, key, size, max_bytes)
                body = f.read(max_bytes + 1)  # a file written in place while read stops here too
                if len(body) > max_bytes:
                    raise ObjectTooLarge(bucket, key, None, max_bytes)
        # Objects are replaced whole (os.replace), so the bytes read are one version: their MD5 is its ETag.
        if if_match is not None and hashlib.md5(body).hexdigest() != if_match:
            raise ObjectChanged(bucket, key, f"PreconditionFailed: the object's ETag is no longer {if_match}")
        return body

    def open_read(self, bucket: str, key: str, version_id: Optional[str] = None) -> ContextManager[BinaryIO]:
        self._check_version(bucket, key, version_id)
        path, _ = self._stat(bucket, key)
        try:
            # O_NOFOLLOW: a file swapped for a symbolic link since `_path` checked it is not followed.
            return os.fdopen(os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise self._missing(bucket, key) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise AccessDenied(
                    bucket, key, "the file is a symbolic link; the local store reads only its own files"
                ) from None
            raise

    def head(self, bucket: str, key: str, version_id: Optional[str] = None) -> ObjectInfo:
        self._check_version(bucket, key, version_id)
        path, st = self._stat(bucket, key)
        return ObjectInfo(bucket, key, st.st_size, self._etag(bucket, key, path, st), _utc(st))

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: Optional[str] = None) -> str:
        """`content_type` is accepted for the interface; files carry no content type."""
        return self._write(bucket, key, [bytes(body)])

    def upload_file(self, bucket: str, key: str, path: str) -> str:
        with open(path, "rb") as source:  # a missing source raises here, naming the local path
            return self._write(bucket, key, iter(functools.partial(source.read, CHUNK_BYTES), b""))

    def list_objects(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        batches = self.list_object_batches(bucket, prefix, start_after)  # raises now for a missing bucket
        return (info for batch in batches for info in listed_objects(bucket, batch))

    def list_object_batches(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[pa.RecordBatch]:
        """The listing in LISTING_SCHEMA batches, a page of files each, with one ETag-cache query
        and one transaction for the ETags it had to compute per page (a listing of millions of
        objects would otherwise cost a query and a commit per object); see `local_listing`."""
        runs = self._walk(bucket, prefix, start_after)
        self._db()  # the cache's tables exist before pages are listed
        return list_batches(os.path.join(self._root, _DB_NAME), bucket, runs)

    def list_prefixes(self, bucket: str, prefix: str = "") -> Iterator[str]:
        folder = self._existing_bucket(bucket, prefix)
        folder_part, _, name_start = prefix.rpartition("/")
        base = folder_part + "/" if folder_part else ""
        if folder_part:
            if _key_problem(folder_part):
                return iter(())
            folder = os.path.join(folder, *folder_part.split("/"))

        def generate() -> Iterator[str]:
            try:
                with os.scandir(folder) as it:
                    names = sorted(
                        e.name.encode("utf-8", "surrogateescape")
                        for e in it
                        if e.is_dir(follow_symlinks=False) and e.name.startswith(name_start)
                    )
            except (FileNotFoundError, NotADirectoryError):
                return
            for name in names:
                try:
                    common = base + name.decode("utf-8") + "/"
                except UnicodeDecodeError:
                    continue
                # S3 reports a prefix only when an object lives under it; an empty folder does not count.
                if self._has_objects(bucket, common):
                    yield common

        return generate()

    def get_tags(self, bucket: str, key: str, version_id: Optional[str] = None) -> dict[str, str]:
        self._check_version(bucket, key, version_id)
        _, st = self._stat(bucket, key)
        return self._read_tags(self._db(), bucket, key, st)

    def put_tags(self, bucket: str, key: str, tags: Mapping[str, str], version_id: Optional[str] = None) -> None:
        self._check_version(bucket, key, version_id)
        validate_tag_set(tags, str(ObjectRef(bucket, key)))
        with self._transaction() as conn:
            _, st = self._stat(bucket, key)
            conn.execute(
                "INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)", (bucket, key, st.st_ino, json.dumps(dict(tags)))
            )

    def merge_tags(
        self, bucket: str, key: str, updates: Mapping[str, str], version_id: Optional[str] = None
    ) -> dict[str, str]:
        """One transaction: concurrent merges, even on the same object, never lose a tag."""
        self._check_version(bucket, key, version_id)
        with self._transaction() as conn:
            _, st = self._stat(bucket, key)
            merged = merge_tag_sets(self._read_tags(conn, bucket, key, st), updates)
            validate_tag_set(merged, str(ObjectRef(bucket, key)))
            conn.execute(
                "INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)", (bucket, key, st.st_ino, json.dumps(merged))
            )
        return merged

    def delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        bucket_dir = self._bucket_dir(bucket)
        if not os.path.isdir(bucket_dir):
            raise ObjectNotFound(bucket, key, "no such bucket")
        with self._transaction() as conn:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                os.unlink(path)
            conn.execute("DELETE FROM tags WHERE bucket = ? AND key = ?", (bucket, key))
            conn.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key))
        # S3 has no folders: drop the ones this delete emptied, so the key space stays free.
        folder = os.path.dirname(path)
        while folder != bucket_dir:
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)
