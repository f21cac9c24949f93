"""The object store interface the Dagster wiring binds: a local folder or S3."""

from __future__ import annotations

import itertools
from typing import BinaryIO, ContextManager, Iterator, Mapping, Optional

import dagster as dg
import pyarrow as pa

from ...core.errors import (
    InvalidKey,
    ObjectNotFound,
)
from ...core.model import ObjectInfo, ObjectRef, listing_batch
from ...core.rules.tags import merge_tag_sets, validate_tag_set

CHUNK_BYTES = 1 << 20  # 1 MiB: copy and read buffer


class ObjectStoreResource(dg.ConfigurableResource):
    """The object store interface (`core.ports.ObjectStore`) as a Dagster resource."""

    def get_bytes(
        self,
        bucket: str,
        key: str,
        version_id: Optional[str] = None,
        if_match: Optional[str] = None,
        max_bytes: Optional[int] = None,
    ) -> bytes:
        """The object's bytes; with `if_match`, ObjectChanged unless its ETag is that one; with
        `max_bytes`, ObjectTooLarge for a larger object, having read at most max_bytes + 1 bytes."""
        raise NotImplementedError

    def open_read(self, bucket: str, key: str, version_id: Optional[str] = None) -> ContextManager[BinaryIO]:
        raise NotImplementedError

    def head(self, bucket: str, key: str, version_id: Optional[str] = None) -> ObjectInfo:
        raise NotImplementedError

    def exists(self, bucket: str, key: str) -> bool:
        """False also for a key this store cannot hold: such an object cannot exist here."""
        try:
            self.head(bucket, key)
        except (ObjectNotFound, InvalidKey):
            return False
        return True

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: Optional[str] = None) -> str:
        raise NotImplementedError

    def upload_file(self, bucket: str, key: str, path: str) -> str:
        raise NotImplementedError

    def list_objects(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        raise NotImplementedError

    def list_object_batches(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[pa.RecordBatch]:
        """`list_objects` in LISTING_SCHEMA batches of a thousand (S3's page size)."""
        objects = self.list_objects(bucket, prefix, start_after)
        return (listing_batch(page) for page in iter(lambda: list(itertools.islice(objects, 1000)), []))

    def list_prefixes(self, bucket: str, prefix: str = "") -> Iterator[str]:
        raise NotImplementedError

    def get_tags(self, bucket: str, key: str, version_id: Optional[str] = None) -> dict[str, str]:
        raise NotImplementedError

    def put_tags(self, bucket: str, key: str, tags: Mapping[str, str], version_id: Optional[str] = None) -> None:
        raise NotImplementedError

    def merge_tags(
        self, bucket: str, key: str, updates: Mapping[str, str], version_id: Optional[str] = None
    ) -> dict[str, str]:
        """Read, merge, validate, write. S3 has no conditional tagging, so two writers merging
        on the SAME object at the same moment can still lose one update there."""
        merged = merge_tag_sets(self.get_tags(bucket, key, version_id), updates)
        validate_tag_set(merged, str(ObjectRef(bucket, key, version_id)))
        self.put_tags(bucket, key, merged, version_id)
        return merged

    def location(self, bucket: str, key: str) -> str:
        """Where a person finds the object: its `s3://` URI (the local store: the file's path)."""
        return f"s3://{bucket}/{key}"

    def console_url(self, bucket: str, key: str) -> Optional[str]:
        """A link to the object in the AWS console, when there is one."""
        return None

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object and its tags; a missing key is not an error (as in S3)."""
        raise NotImplementedError

    def create_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist yet."""
        raise NotImplementedError
