"""The import history interface and what both backends share: keys, sizes, the claim rule."""

from __future__ import annotations

import abc
import json
from typing import Any, Iterator, Mapping, Optional, Sequence

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from ...core.errors import HistoryError
from ...core.model import (
    CORRECTION_FIELDS,
    HISTORY_KEY_SCHEMA,
    HISTORY_LOOKUP_SCHEMA,
    NULL_VERSION,
    ChangeLogCopy,
    HistoryRecord,
    HistoryStatus,
    ObjectRef,
)
from ...core.rules.limits import DYNAMODB_ITEM_LIMIT, dynamodb_item_size

LOOKUP_SCHEMA = HISTORY_LOOKUP_SCHEMA
MAX_ITEM_BYTES = DYNAMODB_ITEM_LIMIT
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024

_FINAL_FOR_ETAG = (HistoryStatus.INDEXED, HistoryStatus.FAILED_PERMANENT)  # no claim is taken on these again
# Columns a report may read with `scan_columns` (no user ids, no extra diagnostics).
SUMMARY_COLUMNS = pa.schema(
    [
        ("status", pa.string()),
        ("reason", pa.string()),
        ("attempts", pa.int64()),
        ("updated_at", pa.float64()),
        ("claim_expires_at", pa.float64()),
        ("correction", pa.string()),
        ("corrected_by", pa.string()),
        ("corrected_at", pa.float64()),
        ("correction_why", pa.string()),
    ]
)
CHANGES_SCHEMA = HISTORY_KEY_SCHEMA  # keys whose record changed or went (`changes_since`)
# Statuses a claim may take whatever the ETag: the next run asks the registry again.
CLAIMABLE = (HistoryStatus.FAILED_TRANSIENT, HistoryStatus.REOPENED)

_FINAL_STATUSES = (HistoryStatus.INDEXED, HistoryStatus.FAILED_PERMANENT, HistoryStatus.FAILED_TRANSIENT)


class ClaimLost(HistoryError):
    """`record`/outcome refused: the caller no longer owns the record (another run claimed it)."""

    def __init__(self, ref: ObjectRef, owner: str, holder: Optional[str]) -> None:
        held = f"it is held by run {holder!r}" if holder else "there is no claim on it"
        super().__init__(
            f"{ref}: outcome of run {owner!r} not recorded: only the claim's owner may record an outcome, and {held}"
        )
        self.ref = ref
        self.owner = owner
        self.holder = holder


def _version_key(ref: ObjectRef) -> str:
    return ref.version_id or NULL_VERSION


def _ref_from_key(object_uri: str, version_id: str) -> ObjectRef:
    bucket, _, key = object_uri.removeprefix("s3://").partition("/")  # bucket names hold no "/"
    return ObjectRef(bucket, key, None if version_id == NULL_VERSION else version_id)


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8"))


item_size = dynamodb_item_size  # DynamoDB's rule, shared with the registry's user record


def record_item_size(record: HistoryRecord) -> int:
    """The size `record()` will count for this outcome (e.g. to trim a long reason beforehand)."""
    return item_size(_outcome_attrs(record, record.updated_at or 1.0))


def _check_item(ref: ObjectRef, attrs: Mapping[str, Any]) -> None:
    """Raise HistoryError, before anything is written, when DynamoDB would refuse the item."""
    if _utf8_len(attrs["object_uri"]) > MAX_PARTITION_KEY_BYTES:
        raise HistoryError(f"{ref}: object_uri exceeds DynamoDB's {MAX_PARTITION_KEY_BYTES}-byte partition key limit")
    if _utf8_len(attrs["version_id"]) > MAX_SORT_KEY_BYTES:
        raise HistoryError(f"{ref}: version_id exceeds DynamoDB's {MAX_SORT_KEY_BYTES}-byte sort key limit")
    size = item_size(attrs)
    if size > MAX_ITEM_BYTES:
        raise HistoryError(
            f"{ref}: history record of {size} bytes exceeds DynamoDB's item limit of {MAX_ITEM_BYTES} bytes"
            " (attribute names and values, UTF-8)"
        )


def _key_attrs(ref: ObjectRef) -> dict[str, Any]:
    return {"object_uri": ref.uri, "version_id": _version_key(ref)}


def _claim_attrs(ref: ObjectRef, etag: str, owner: str, now: float, expires: float) -> dict[str, Any]:
    return {
        **_key_attrs(ref),
        "etag": etag,
        "status": HistoryStatus.CLAIMED.value,
        "owner": owner,
        "updated_at": now,
        "claim_expires_at": expires,
        "attempts": 1,
    }


def _outcome_attrs(record: HistoryRecord, now: float) -> dict[str, Any]:
    given = getattr(record.status, "value", record.status)
    try:
        status = HistoryStatus(given)
    except ValueError:
        status = None
    if status not in _FINAL_STATUSES:
        raise HistoryError(f"{record.ref}: record() takes an outcome (indexed/failed_*), not {given!r}")
    extra = dict(record.extra)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise HistoryError(f"{record.ref}: record extra must map strings to strings")
    return {
        **_key_attrs(record.ref),
        "etag": record.etag,
        "status": status.value,
        "user_id": record.user_id,
        "reason": record.reason,
        "owner": record.owner,
        "updated_at": record.updated_at or now,
        "claim_expires_at": 0,
        "attempts": record.attempts,
        "extra": extra,
    }


def _claim_allowed(row: Mapping[str, Any], etag: str, owner: str, now: float) -> bool:
    """The claim rule, for SQLite (DynamoDB states the same rule as a ConditionExpression).

    A live claim belongs to its run whatever its ETag. Otherwise a claim may take a transient
    failure, or the record of another ETag: the caller has just seen that `etag` is the object's
    current one, so the record it replaces is an older image's, and the history moves forward.
    """
    status = row["status"]
    if status == HistoryStatus.CLAIMED.value:
        return row["claim_expires_at"] < now or row["owner"] == owner
    return status in (s.value for s in CLAIMABLE) or row["etag"] != etag


def _summary_schema(columns: Sequence[str]) -> pa.Schema:
    unknown = [c for c in columns if c not in SUMMARY_COLUMNS.names]
    if unknown or not columns:
        raise HistoryError(f"scan_columns takes columns among {SUMMARY_COLUMNS.names}, not {list(columns)}")
    return pa.schema([SUMMARY_COLUMNS.field(c) for c in columns])


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unique_keys(refs: Sequence[ObjectRef]) -> dict[tuple[str, str], ObjectRef]:
    """(object_uri, version_id) -> the caller's ref; duplicates collapse (BatchGetItem refuses them)."""
    return {(ref.uri, _version_key(ref)): ref for ref in refs}


def _field(row: Any, name: str) -> Any:
    """A column that older stores may lack (sqlite3.Row has no `get`)."""
    try:
        return row[name]
    except (KeyError, IndexError):
        return None


def _record_from_row(row: Mapping[str, Any], ref: Optional[ObjectRef] = None) -> HistoryRecord:
    extra = row["extra"]
    return HistoryRecord(
        ref=ref or _ref_from_key(row["object_uri"], row["version_id"]),
        etag=row["etag"],
        status=HistoryStatus(row["status"]),
        user_id=row["user_id"],
        reason=row["reason"] or "",
        attempts=int(row["attempts"] or 0),
        owner=row["owner"] or "",
        updated_at=float(row["updated_at"] or 0),
        claim_expires_at=float(row["claim_expires_at"] or 0),
        extra=json.loads(extra) if isinstance(extra, str) else dict(extra or {}),
        correction=_field(row, "correction") or "",
        corrected_by=_field(row, "corrected_by") or "",
        corrected_at=float(_field(row, "corrected_at") or 0),
        correction_why=_field(row, "correction_why") or "",
    )


def reopened_reason(correction: str, record: HistoryRecord) -> str:
    """The reason a reopened record carries: the correction, then what it was (code only)."""
    code = record.reason.split(":", 1)[0].strip() or "none"
    return f"{correction}: was {record.status.value} ({code})"


def correction_attrs(correction: str, by: str, why: str, at: float) -> dict[str, Any]:
    return dict(zip(CORRECTION_FIELDS, (str(correction), by, at, why)))


class ImportHistoryResource(dg.ConfigurableResource, abc.ABC):
    """The import history as a Dagster resource: annotate with this, bind SQLite or DynamoDB."""

    @abc.abstractmethod
    def lookup(self, refs: Sequence[ObjectRef]) -> dict[ObjectRef, HistoryRecord]:
        """Batch read; refs with no record are absent from the result."""

    def lookup_table(self, keys: pa.Table) -> pa.Table:
        """Batch read in columns: `keys` has object_uri and version_id ("null" for none); the
        answer has LOOKUP_SCHEMA's columns, one row per key that has a record."""
        refs = [
            _ref_from_key(uri, vid)
            for uri, vid in zip(keys.column("object_uri").to_pylist(), keys.column("version_id").to_pylist())
        ]
        records = self.lookup(refs).values()
        return pa.Table.from_pydict(
            {
                "object_uri": [r.ref.uri for r in records],
                "version_id": [_version_key(r.ref) for r in records],
                "etag": [r.etag for r in records],
                "status": [r.status.value for r in records],
                "reason": [r.reason for r in records],
            },
            schema=LOOKUP_SCHEMA,
        )

    def expect_lookups(self, count: int) -> str:
        """Say how many objects qualification is about to ask about; returns the strategy chosen."""
        return "lookup"

    def final_outcomes(self, objects: pa.Table) -> pa.Table:
        """Which of these objects (object_uri, version_id, etag) have a final outcome (indexed or
        failed_permanent) for that same ETag: LOOKUP_SCHEMA rows, one per such object."""
        answer = self.lookup_table(objects.select(["object_uri", "version_id"]))
        joined = (
            objects.select(["object_uri", "version_id", "etag"])
            .rename_columns(["object_uri", "version_id", "asked_etag"])
            .join(answer, ["object_uri", "version_id"], join_type="inner")
        )
        final = pc.is_in(joined.column("status"), pa.array([s.value for s in _FINAL_FOR_ETAG]))
        same = pc.and_(final, pc.equal(joined.column("etag"), joined.column("asked_etag")))
        return joined.filter(same).select(LOOKUP_SCHEMA.names).cast(LOOKUP_SCHEMA)

    @abc.abstractmethod
    def claim(self, ref: ObjectRef, etag: str, owner: str, lease_seconds: float) -> bool:
        """Atomically take the object for `owner` for `lease_seconds`; False when another run
        holds it or its outcome for this ETag is final (indexed / failed_permanent)."""

    @abc.abstractmethod
    def record(self, record: HistoryRecord) -> None:
        """Write the outcome of `record.owner`'s claim; ClaimLost when it no longer owns it."""

    @abc.abstractmethod
    def release(self, ref: ObjectRef, owner: str) -> bool:
        """End `owner`'s lease without an outcome; False when it held no claim."""

    @abc.abstractmethod
    def renew(self, ref: ObjectRef, owner: str, lease_seconds: float) -> bool:
        """Extend `owner`'s claim to `lease_seconds` from now; False when it no longer holds it."""

    @abc.abstractmethod
    def reopen(self, record: HistoryRecord, correction: str, by: str, why: str, at: float) -> bool:
        """An operator's correction: set this record `reopened` (the next run claims it and asks the
        registry again), stamped with who, when and why, if it is still as `record` says (same
        status and ETag); False, and nothing written, when it changed meanwhile (e.g. claimed)."""

    @abc.abstractmethod
    def changes_since(self, since: float) -> Optional[pa.Table]:
        """The keys (CHANGES_SCHEMA) whose record left a final outcome (changed or deleted, by a
        correction, another run or by hand) at or after `since` (epoch seconds); None when the
        change log does not reach back that far (then nothing may be assumed unchanged)."""

    def keep_change_log(self) -> Optional[ChangeLogCopy]:
        """Copy a change stream that forgets (DynamoDB's: 24 hours) into the lasting log, from
        where the last copy stopped; None for a history that writes its log with its records."""
        return None

    @abc.abstractmethod
    def records_of(self, object_uri: str) -> list[HistoryRecord]:
        """Every version's record of one object (`rivbulk where`)."""

    @abc.abstractmethod
    def records_of_user(self, user_id: str) -> list[HistoryRecord]:
        """The records naming this user (`rivbulk where`, `rivbulk lost --user`); may read the whole history."""

    @abc.abstractmethod
    def scan(self) -> Iterator[HistoryRecord]:
        """Every record."""

    @abc.abstractmethod
    def scan_columns(self, columns: Sequence[str], batch_rows: int = 100_000) -> Iterator[pa.RecordBatch]:
        """Every record's `columns` only (names from SUMMARY_COLUMNS), in Arrow batches: reports
        over millions of records read what they aggregate and nothing else."""
