"""The import history: one record per object version, saying what the pipeline did with it.

Two implementations of `core.ports.ImportHistory`, with identical semantics:

- `SqliteImportHistory` (embedded): one SQLite file in WAL mode, one connection per thread,
  safe for a thread pool and for several Dagster run processes sharing the file.
- `DynamoImportHistory` (production): one DynamoDB table, created by `create_history_table`
  (`rivbulk create-history-table`). Key schema and attributes:

      object_uri        S  partition key  "s3://<bucket>/<key>"
      version_id        S  sort key       the S3 version id, or "null" for a null version
      etag              S  the ETag (hex) of the content the record is about
      status            S  claimed | indexed | failed_permanent | failed_transient
      user_id           S  the user registered (absent when unknown); never logged
      reason            S  why (gateway reason, error code); never property contents
      attempts          N  claims taken on this object version
      owner             S  the run that holds / held the claim
      updated_at        N  epoch seconds of the last write
      claim_expires_at  N  epoch seconds; the claim's lease (0 once an outcome is recorded)
      extra             M  optional small string diagnostics (never image bytes, never properties)

Semantics shared by both:

- `claim(ref, etag, owner, lease_seconds)` is one atomic conditional write. It succeeds iff
  there is no record, or the record is `failed_transient`, or its ETag differs from `etag`,
  or it is `claimed` with an expired lease, or `claimed` by the same owner (re-entrant).
  On success: status=claimed, owner, etag, claim_expires_at=now+lease, attempts+1.
- `record(record)` writes the outcome only while `record.owner` still owns the record; otherwise
  it raises `ClaimLost` (a `HistoryError`) and writes nothing, so a stale run can never overwrite
  a newer run's outcome. `attempts` is counted by `claim`; `record` keeps the stored count.
- `release(ref, owner)` ends this owner's lease without an outcome (the object becomes claimable).
- Every write is checked first against DynamoDB's item limit (400 KB, attribute names and values
  counted in UTF-8; the decimal reading of "KB", safe under both) and its key limits; SQLite applies
  the same bounds so both behave alike.
"""

from .base import (
    MAX_ITEM_BYTES,
    MAX_PARTITION_KEY_BYTES,
    MAX_SORT_KEY_BYTES,
    NULL_VERSION,
    ClaimLost,
    ImportHistoryResource,
    item_size,
    record_item_size,
)
from .dynamodb import DynamoImportHistory, create_history_table
from .sqlite import SqliteImportHistory

__all__ = [
    "MAX_ITEM_BYTES",
    "MAX_PARTITION_KEY_BYTES",
    "MAX_SORT_KEY_BYTES",
    "NULL_VERSION",
    "ClaimLost",
    "ImportHistoryResource",
    "DynamoImportHistory",
    "SqliteImportHistory",
    "create_history_table",
    "item_size",
    "record_item_size",
]
