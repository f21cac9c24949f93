"""The interfaces the core needs from the outside world.

Each has a production adapter (boto3 / HTTP) and an embedded one (files / SQLite) in
`rivbulk_pipeline.resources`, whose base classes declare exactly these methods (a test holds
them to it, and holds the Dagster wiring to calling nothing else). The core depends on these
protocols only.
"""

from __future__ import annotations

from typing import BinaryIO, Callable, ContextManager, Iterator, Mapping, Optional, Protocol, Sequence

import pyarrow as pa

from .model import ChangeLogCopy, GatewayResult, HistoryRecord, ObjectInfo, ObjectRef, RegistrationInfo


class ObjectStore(Protocol):
    """S3's semantics: buckets, any UTF-8 key, ETags, object tags (<= 10, whole-set replace).

    Errors: ObjectNotFound, ObjectChanged, ObjectTooLarge, AccessDenied, InvalidKey, TagLimitError, TransientStoreError.
    """

    def get_bytes(
        self,
        bucket: str,
        key: str,
        version_id: Optional[str] = None,
        if_match: Optional[str] = None,
        max_bytes: Optional[int] = None,
    ) -> bytes:
        """With `if_match`, ObjectChanged unless the object's ETag is that one (S3 IfMatch). With
        `max_bytes`, ObjectTooLarge for a larger object, refused from its size where the store
        knows it before reading, and never more than max_bytes + 1 bytes read."""
        ...

    def open_read(self, bucket: str, key: str, version_id: Optional[str] = None) -> ContextManager[BinaryIO]:
        """A streaming, file-like reader (for inventory data files, which can be GBs)."""
        ...

    def head(self, bucket: str, key: str, version_id: Optional[str] = None) -> ObjectInfo: ...

    def exists(self, bucket: str, key: str) -> bool: ...

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: Optional[str] = None) -> str:
        """Write atomically; return the new ETag (hex, no quotes)."""
        ...

    def upload_file(self, bucket: str, key: str, path: str) -> str:
        """Write a local file as an object (multipart where large); return the ETag."""
        ...

    def list_objects(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object under prefix, in key (UTF-8 byte) order, paginated under the hood."""
        ...

    def list_object_batches(self, bucket: str, prefix: str = "", start_after: str = "") -> Iterator[pa.RecordBatch]:
        """The same listing in LISTING_SCHEMA batches (core.model), for listings of millions."""
        ...

    def list_prefixes(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """The common prefixes one level below `prefix` (S3 ListObjectsV2 with Delimiter='/')."""
        ...

    def get_tags(self, bucket: str, key: str, version_id: Optional[str] = None) -> dict[str, str]: ...

    def put_tags(self, bucket: str, key: str, tags: Mapping[str, str], version_id: Optional[str] = None) -> None:
        """Replace the whole tag set (S3 PutObjectTagging); TagLimitError past S3's limits."""
        ...

    def merge_tags(
        self, bucket: str, key: str, updates: Mapping[str, str], version_id: Optional[str] = None
    ) -> dict[str, str]:
        """Read, merge, write: keep every other tag. A key equal to an update's key
        case-insensitively is replaced. Return the tag set written."""
        ...

    def location(self, bucket: str, key: str) -> str:
        """Where a person finds the object: its `s3://` URI (a local store: the file's path)."""
        ...

    def console_url(self, bucket: str, key: str) -> Optional[str]:
        """A link to the object in the AWS console, or None when there is none."""
        ...

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object and its tags; a missing key is not an error (as in S3)."""
        ...

    def create_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist yet."""
        ...


class RegistrationProvider(Protocol):
    """Says who an image belongs to (the seed's IRegistrationDataProvider).

    `registration_for` gets the object's tags (read once by the caller) and returns the
    user id and an opaque reference to the properties; `load_properties` reads them when
    they are needed. Raise `RegistrationRejected(reason, detail)` for a per-object rule
    violation; any other exception is recorded as a provider error for that object only.
    """

    def registration_for(self, obj: ObjectRef, tags: Mapping[str, str]) -> Optional[RegistrationInfo]:
        """None when the object carries no user id."""
        ...

    def load_properties(self, properties_ref: str) -> dict[str, str]: ...


class Gateway(Protocol):
    """Registers one user with one face image. Never raises for a per-user failure:
    the result says INDEXED, FAILED_PERMANENT (with the reason) or FAILED_TRANSIENT (with
    `unknown` when the call may have registered the user); raises DeploymentError for a fault
    of the deployment (URL, stage, credentials, permission, a request shape it cannot take).

    `pace` is called right before the call goes out, after the request is built and checked:
    the rate limiter, so a refused input spends no token and the call leaves when it is let go.
    `source` is the object the image is (RIV reads it itself when `needs_image_bytes` is False)."""

    @property
    def needs_image_bytes(self) -> bool: ...

    def register(
        self,
        user_id: str,
        image: Optional[bytes],
        properties: Mapping[str, str],
        pace: Callable[[], object] = ...,
        *,
        source: Optional[ObjectRef] = None,
    ) -> GatewayResult: ...

    def user_exists(self, user_id: str) -> Optional[bool]:
        """Whether the registry holds this user (RIV's check-userid); None when it cannot tell."""
        ...


class ImportHistory(Protocol):
    """One record per object version: what the pipeline did with it.

    `claim` is a conditional write: it succeeds only when no record exists, the record is a
    transient failure or reopened by an operator, the record's ETag differs from `etag`, or the record is a claim whose
    lease has expired. Two runs can never both hold a claim on one object.
    """

    def lookup(self, refs: Sequence[ObjectRef]) -> dict[ObjectRef, HistoryRecord]:
        """Batch read; refs with no record are absent from the result."""
        ...

    def lookup_table(self, keys: pa.Table) -> pa.Table:
        """Batch read in columns: `keys` has object_uri and version_id ("null" for none); the answer
        has HISTORY_LOOKUP_SCHEMA's columns, one row per key that has a record."""
        ...

    def expect_lookups(self, count: int) -> str:
        """Say how many objects qualification is about to ask about; returns the strategy chosen."""
        ...

    def final_outcomes(self, objects: pa.Table) -> pa.Table:
        """Which of these objects (object_uri, version_id, etag) are indexed or failed permanently
        for that same ETag (HISTORY_LOOKUP_SCHEMA rows). Qualification asks this once per batch."""
        ...

    def claim(self, ref: ObjectRef, etag: str, owner: str, lease_seconds: float) -> bool: ...

    def record(self, record: HistoryRecord) -> None:
        """Write the final outcome (INDEXED / FAILED_*) of a claim."""
        ...

    def release(self, ref: ObjectRef, owner: str) -> bool:
        """End this owner's claim without an outcome: the object is claimable again at once."""
        ...

    def renew(self, ref: ObjectRef, owner: str, lease_seconds: float) -> bool:
        """Extend this owner's claim to `lease_seconds` from now (as a call leaves); False when it
        no longer holds the claim (another run took the object over)."""
        ...

    def reopen(self, record: HistoryRecord, correction: str, by: str, why: str, at: float) -> bool:
        """An operator's correction: the record becomes `reopened` (claimable), stamped with who,
        when and why, if it is still as `record` says; False when it changed meanwhile."""
        ...

    def changes_since(self, since: float) -> Optional[pa.Table]:
        """Keys (object_uri, version_id) whose final record changed or went since `since`; None
        when the change log does not reach back that far."""
        ...

    def keep_change_log(self) -> Optional[ChangeLogCopy]:
        """Move what a short-lived change stream holds into the lasting log (DynamoDB's stream
        keeps 24 hours); None for a history whose log is written with its records."""
        ...

    def records_of(self, object_uri: str) -> list[HistoryRecord]: ...

    def records_of_user(self, user_id: str) -> list[HistoryRecord]: ...

    def scan(self) -> Iterator[HistoryRecord]:
        """Every record (for reports and tests)."""
        ...

    def scan_columns(self, columns: Sequence[str], batch_rows: int = 100_000) -> Iterator[pa.RecordBatch]:
        """Every record's `columns` only (no user ids, no extra diagnostics), in Arrow batches: a
        report over millions of records reads what it aggregates and nothing else."""
        ...
