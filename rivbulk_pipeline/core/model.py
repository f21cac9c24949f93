"""Value types shared by the core and the adapters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator, Mapping, Optional, Sequence

import pyarrow as pa


@dataclass(frozen=True, order=True)
class ObjectRef:
    """One object version in a bucket. `version_id` is None for unversioned/null versions."""

    bucket: str
    key: str
    version_id: Optional[str] = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def __str__(self) -> str:  # used in error messages and logs: a location, never content
        return self.uri if not self.version_id else f"{self.uri}?versionId={self.version_id}"


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a HEAD says about one object."""

    bucket: str
    key: str
    size: int
    etag: str  # hex, without quotes
    last_modified: datetime  # timezone-aware UTC
    version_id: Optional[str] = None
    is_latest: bool = True
    is_delete_marker: bool = False
    storage_class: str = "STANDARD"


# A listing in columns (`ObjectStore.list_object_batches`): current versions only, in key
# order, one row per object; what `ObjectInfo` says of each, without a Python object per row.
LISTING_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("size", pa.int64()),
        ("last_modified", pa.timestamp("us", tz="UTC")),
        ("etag", pa.string()),  # hex, without quotes
        ("storage_class", pa.string()),
    ]
)


def listing_batch(objects: Sequence[ObjectInfo]) -> pa.RecordBatch:
    """Listed objects (current versions) as one LISTING_SCHEMA batch."""
    return pa.RecordBatch.from_arrays(
        [
            pa.array([o.key for o in objects], pa.string()),
            pa.array([o.size for o in objects], pa.int64()),
            pa.array([o.last_modified for o in objects], pa.timestamp("us", tz="UTC")),
            pa.array([o.etag for o in objects], pa.string()),
            pa.array([o.storage_class for o in objects], pa.string()),
        ],
        schema=LISTING_SCHEMA,
    )


def listed_objects(bucket: str, batch: pa.RecordBatch) -> Iterator[ObjectInfo]:
    """The ObjectInfo of every row of a LISTING_SCHEMA batch."""
    columns = [batch.column(name).to_pylist() for name in LISTING_SCHEMA.names]
    for key, size, last_modified, etag, storage_class in zip(*columns):
        yield ObjectInfo(bucket, key, size, etag, last_modified, storage_class=storage_class)


# ---- tables: the asset outputs, persisted as Parquet (never image bytes, never properties) ----

# inventory_report: one row per inventory line, keys decoded.
INVENTORY_SCHEMA = pa.schema(
    [
        ("bucket", pa.string()),
        ("key", pa.string()),
        ("version_id", pa.string()),  # null when the report has no VersionId or it is empty
        ("is_latest", pa.bool_()),  # null when the report is current-versions only
        ("is_delete_marker", pa.bool_()),
        ("size", pa.int64()),
        ("last_modified_date", pa.timestamp("ms", tz="UTC")),
        ("e_tag", pa.string()),
        ("storage_class", pa.string()),
    ]
)

# batch_manifest: the candidate images (also written as S3BatchOperations_CSV_20180820).
CANDIDATE_SCHEMA = pa.schema(
    [
        ("bucket", pa.string()),
        ("key", pa.string()),
        ("version_id", pa.string()),
        ("size", pa.int64()),
        ("e_tag", pa.string()),
    ]
)

# qualified_objects: every candidate with a decision.
QUALIFIED_SCHEMA = pa.schema(
    list(CANDIDATE_SCHEMA)
    + [
        ("qualified", pa.bool_()),
        ("reason", pa.string()),  # a Reason value
        ("detail", pa.string()),  # a human sentence naming the rule; never property contents
        ("user_id", pa.string()),  # null unless qualified
        ("properties_ref", pa.string()),  # where the provider will read properties from; null if none
    ]
)

# indexed_users: every qualified object with its registration outcome.
INDEXED_SCHEMA = pa.schema(
    list(CANDIDATE_SCHEMA)
    + [
        ("outcome", pa.string()),  # an Outcome value
        ("reason", pa.string()),
        ("attempts", pa.int32()),
    ]
)

NULL_VERSION = "null"  # S3's own name for the null version; the history's keys cannot be empty

# The import history's answer for a batch of keys, read in columns (ImportHistory.lookup_table).
HISTORY_KEY_SCHEMA = pa.schema([("object_uri", pa.string()), ("version_id", pa.string())])  # "null": no version
HISTORY_LOOKUP_SCHEMA = pa.schema(
    list(HISTORY_KEY_SCHEMA) + [("etag", pa.string()), ("status", pa.string()), ("reason", pa.string())]
)


class _Text(str, enum.Enum):
    """An enum that formats as its value (so f-strings and Parquet say `qualified`, not `Reason.QUALIFIED`)."""

    def __str__(self) -> str:
        return self.value


class Reason(_Text):
    """Why a candidate did or did not qualify."""

    QUALIFIED = "qualified"
    ALREADY_INDEXED = "already_indexed"  # import history: indexed, same ETag/version
    PREVIOUSLY_FAILED = "previously_failed"  # import history: permanent failure, same ETag/version
    INDEXED_TAG = "indexed_tag"  # Indexed=true tag
    IGNORED = "ignored"  # Ignore=true tag
    NO_USER_ID = "no_user_id"
    BAD_USER_ID = "bad_user_id"  # empty, too long (> 128) or otherwise invalid
    BAD_PROPERTIES = "bad_properties"  # not a Mapping[str, str], too large, bad JSON
    PROPERTIES_NOT_FOUND = "properties_not_found"
    PROPERTIES_NOT_ALLOWED = "properties_not_allowed"  # not an s3://.../*.json path in an allowed bucket
    OBJECT_NOT_FOUND = "object_not_found"  # listed in the inventory but gone (eventual consistency)
    ACCESS_DENIED = "access_denied"
    PROVIDER_ERROR = "provider_error"  # a custom provider raised
    TRANSIENT_ERROR = "transient_error"  # store throttling/5xx after retries: the next run retries


class Outcome(_Text):
    """What happened to a qualified object at indexing time."""

    INDEXED = "indexed"
    FAILED_PERMANENT = "failed_permanent"  # never retried for this ETag/version
    FAILED_TRANSIENT = "failed_transient"  # retried by the next run
    SKIPPED = "skipped"  # already indexed meanwhile, or claimed by another live run


@dataclass(frozen=True)
class RegistrationInfo:
    """What a registration provider says about one image: who it belongs to."""

    user_id: str
    properties_ref: Optional[str] = None  # opaque to the core; the provider loads it


@dataclass(frozen=True)
class GatewayResult:
    """The gateway's answer to one register call."""

    outcome: Outcome  # INDEXED, FAILED_PERMANENT or FAILED_TRANSIENT
    reason: str = ""  # a code, then details: "UserAlreadyExists: ...", "http_503", "timeout: ..."
    # FAILED_TRANSIENT only: the request left and may have registered the user (a 504, a read
    # timeout, a dropped connection): settle with the registry before calling again.
    unknown: bool = False

    @classmethod
    def succeeded(cls, reason: str = "SUCCEEDED") -> "GatewayResult":
        return cls(Outcome.INDEXED, reason)

    @classmethod
    def permanent(cls, reason: str) -> "GatewayResult":
        return cls(Outcome.FAILED_PERMANENT, reason)

    @classmethod
    def transient(cls, reason: str, unknown: bool = False) -> "GatewayResult":
        return cls(Outcome.FAILED_TRANSIENT, reason, unknown)


class HistoryStatus(_Text):
    CLAIMED = "claimed"  # a run is registering it now (lease until claim_expires_at)
    INDEXED = "indexed"
    FAILED_PERMANENT = "failed_permanent"
    FAILED_TRANSIENT = "failed_transient"
    REOPENED = "reopened"  # an operator's correction (retry, lost): the next run registers it again


class Correction(_Text):
    """What an operator's correction did to a history record."""

    RETRY = "retry"  # a failure reopened on purpose
    LOST = "lost"  # a registration the registry lost: reopened, its Indexed tag removed


# What the history keeps of the last correction of a record (kept by later outcomes; never user ids).
CORRECTION_FIELDS = ("correction", "corrected_by", "corrected_at", "correction_why")


@dataclass(frozen=True)
class HistoryRecord:
    """The import history's word on one object version."""

    ref: ObjectRef
    etag: str
    status: HistoryStatus
    user_id: Optional[str] = None
    reason: str = ""
    attempts: int = 0
    owner: str = ""  # the run that wrote it
    updated_at: float = 0.0  # epoch seconds
    claim_expires_at: float = 0.0  # epoch seconds; only meaningful when CLAIMED
    extra: Mapping[str, str] = field(default_factory=dict)
    correction: str = ""  # the last operator correction (a Correction value), "" when none
    corrected_by: str = ""
    corrected_at: float = 0.0
    correction_why: str = ""


@dataclass(frozen=True)
class ChangeLogCopy:
    """One copy of a history's change stream into its lasting log: the keys it named, and the
    span the log now covers without a gap (epoch seconds)."""

    keys: int
    covered_from: float
    covered_to: float
    gap_found: bool  # the stream had lost records since the last copy: the log starts again
