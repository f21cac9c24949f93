"""A tiny object store over a folder, for the inventory code's tests."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from rivbulk_pipeline.core.errors import ObjectNotFound
from rivbulk_pipeline.core.model import ObjectInfo


class FolderStore:
    """A tiny ObjectStore over a folder: object s3://bucket/key is the file <root>/bucket/key.

    Only what the inventory code uses; tags are not supported. `writes` records the
    order in which keys were written.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.writes: list[str] = []

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def _missing(self, bucket: str, key: str) -> ObjectNotFound:
        return ObjectNotFound(bucket, key, "NoSuchKey")

    def get_bytes(self, bucket: str, key: str, version_id: Optional[str] = None) -> bytes:
        path = self._path(bucket, key)
        if not path.is_file():
            raise self._missing(bucket, key)
        return path.read_bytes()

    @contextlib.contextmanager
    def open_read(self, bucket: str, key: str) -> Iterator[BinaryIO]:
        path = self._path(bucket, key)
        if not path.is_file():
            raise self._missing(bucket, key)
        with open(path, "rb") as handle:
            yield handle

    def head(self, bucket: str, key: str, version_id: Optional[str] = None) -> ObjectInfo:
        path = self._path(bucket, key)
        if not path.is_file():
            raise self._missing(bucket, key)
        return self._info(bucket, key, path)

    def _info(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        stat = path.stat()
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=stat.st_size,
            etag=hashlib.md5(path.read_bytes()).hexdigest(),
            last_modified=datetime.fromtimestamp(stat.st_mtime, timezone.utc),
        )

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: Optional[str] = None) -> str:
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        self.writes.append(key)
        return hashlib.md5(body).hexdigest()

    def upload_file(self, bucket: str, key: str, path: str) -> str:
        return self.put_bytes(bucket, key, Path(path).read_bytes())

    def _keys(self, bucket: str) -> list[str]:
        base = self.root / bucket
        if not base.is_dir():
            return []
        keys = [p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()]
        return sorted(keys, key=lambda k: k.encode("utf-8"))

    def list_objects(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        for key in self._keys(bucket):
            if key.startswith(prefix) and key.encode() > start_after.encode():
                yield self._info(bucket, key, self._path(bucket, key))

    def list_prefixes(self, bucket: str, prefix: str = "") -> Iterator[str]:
        found = {
            prefix + k[len(prefix) :].split("/", 1)[0] + "/"
            for k in self._keys(bucket)
            if k.startswith(prefix) and "/" in k[len(prefix) :]
        }
        yield from sorted(found)

    def get_tags(self, bucket, key, version_id=None):  # pragma: no cover - not used here
        raise NotImplementedError

    def put_tags(self, bucket, key, tags, version_id=None):  # pragma: no cover
        raise NotImplementedError

    def merge_tags(self, bucket, key, updates, version_id=None):  # pragma: no cover
        raise NotImplementedError
