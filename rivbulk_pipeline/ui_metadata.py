"""What the assets show in the Dagster UI: column schemas, the rows that did not succeed with
their reasons, counts by reason, and where each table is.

Only object keys, outcomes, reason codes and counts: never image bytes, property values or user
ids (a reason's detail may name the user, so only its code is shown; the full reason is in the
stored table).
"""

from __future__ import annotations

import collections
import re
from typing import Callable, Iterable, Iterator, Optional

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from .core.model import Outcome
from .core.steps.summary import reason_codes
from .core.steps.tables import TableLocation
from .resources.object_store import ObjectStoreResource

FAILED_ROWS_SHOWN = 300  # rows of the failed-rows table kept in the metadata (the stored table has all)

# One description per column name, whichever table it is in.
COLUMN_DESCRIPTIONS = {
    "bucket": "the image's bucket",
    "key": "the object key, decoded",
    "version_id": "the object version (empty: unversioned or null version)",
    "is_latest": "whether this is the current version (all-versions reports only)",
    "is_delete_marker": "whether this row is a delete marker",
    "size": "bytes",
    "last_modified_date": "when the object was written (UTC)",
    "e_tag": "the object's ETag as the inventory lists it",
    "storage_class": "S3 storage class",
    "qualified": "whether the candidate qualifies for registration",
    "reason": "why: a reason code, then details (`qualified`, `already_indexed`, `too_small: ...`)",
    "detail": "a sentence naming the rule the object broke (never property contents)",
    "user_id": "the user the image belongs to (qualified rows only)",
    "properties_ref": "where the provider reads the user's properties from (never their contents)",
    "outcome": "indexed, failed_permanent, failed_transient or skipped",
    "attempts": "gateway calls made for this object in the run",
}


def column_schema(schema: pa.Schema, descriptions: Optional[dict[str, str]] = None) -> dg.TableSchema:
    """A Parquet table's columns as Dagster shows them (`dagster/column_schema`)."""
    described = {**COLUMN_DESCRIPTIONS, **(descriptions or {})}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(field.name, str(field.type), description=described.get(field.name), constraints=None)
            for field in schema
        ]
    )


def schema_metadata(schema: pa.Schema, descriptions: Optional[dict[str, str]] = None) -> dict[str, dg.TableSchema]:
    return {"dagster/column_schema": column_schema(schema, descriptions)}


def location_metadata(
    store: ObjectStoreResource, location: TableLocation, name: str = "table"
) -> dict[str, dg.MetadataValue]:
    """Where a person finds the table: the file's path (local store) or its s3:// URI and console link."""
    entries = {f"{name}_location": dg.MetadataValue.path(store.location(location.bucket, location.key))}
    console = store.console_url(location.bucket, location.key)
    if console:
        entries[f"{name}_console"] = dg.MetadataValue.url(console)
    return entries


def _key(code: str) -> str:
    """A reason code as a metadata key (`States.DataLimitExceeded` -> `States_DataLimitExceeded`, <= 64 characters)."""
    return re.sub(r"\W+", "_", code).strip("_")[:64] or "none"


FAILED_ROWS_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("key", "string", description="the object key"),
        dg.TableColumn("outcome", "string", description="not_qualified, failed_permanent, failed_transient or skipped"),
        dg.TableColumn("reason", "string", description="the reason code (the full reason is in the stored table)"),
        dg.TableColumn("attempts", "int", description="gateway calls made (0: never sent)"),
    ]
)


class FailedRows:
    """The rows that did not succeed, watched while a table streams past: counts by outcome and
    reason code, and the first `limit` rows ordered by reason then key (memory bounded by `limit`)."""

    def __init__(self, limit: int = FAILED_ROWS_SHOWN) -> None:
        self.limit = limit
        self.total = 0
        self.by_reason: collections.Counter = collections.Counter()
        self._kept: Optional[pa.Table] = None

    def add(self, keys: pa.Array, outcomes: pa.Array, reasons: pa.Array, attempts: pa.Array) -> None:
        rows = pa.table(
            {
                "key": keys,
                "outcome": outcomes,
                "reason": reason_codes(reasons),
                "attempts": pc.cast(attempts, pa.int64()),
            }
        )
        if not rows.num_rows:
            return
        self.total += rows.num_rows
        for item in rows.group_by(["outcome", "reason"]).aggregate([("key", "count")]).to_pylist():
            self.by_reason[(item["outcome"], item["reason"])] += item["key_count"]
        kept = rows if self._kept is None else pa.concat_tables([self._kept, rows])
        self._kept = kept.sort_by([("reason", "ascending"), ("key", "ascending")]).slice(0, self.limit)

    @property
    def reasons(self) -> collections.Counter:
        """Rows by reason code, whatever the outcome."""
        reasons: collections.Counter = collections.Counter()
        for (_, reason), count in self.by_reason.items():
            reasons[reason] += count
        return reasons

    def metadata(self, counts: bool = True) -> dict[str, dg.MetadataValue]:
        """The failed-rows table, and with `counts` a `reason_<code>` count per reason code."""
        rows = self._kept.to_pylist() if self._kept is not None else []
        reasons = self.reasons
        shown = (
            f"first {len(rows)} of {self.total}, by reason"
            if self.total > len(rows)
            else f"all {self.total}, by reason"
        )
        return {
            "failed_rows": dg.MetadataValue.table([dg.TableRecord(row) for row in rows], schema=FAILED_ROWS_SCHEMA),
            "failed_rows_shown": dg.MetadataValue.text(shown),
            **{
                f"reason_{_key(reason)}": dg.MetadataValue.int(count)
                for reason, count in sorted(reasons.items())
                if counts
            },
        }

    def watch(
        self,
        batches: Iterable[pa.RecordBatch],
        failed: Callable[[pa.RecordBatch], pa.Array],
        attempts: Optional[str] = "attempts",
    ) -> Iterator[pa.RecordBatch]:
        """Pass batches through, adding the rows `failed` selects."""
        for batch in batches:
            chosen = batch.filter(failed(batch))
            outcomes = (
                chosen.column("outcome")
                if "outcome" in chosen.schema.names
                else pa.array(["not_qualified"] * chosen.num_rows)
            )
            tries = chosen.column(attempts) if attempts else pa.array([0] * chosen.num_rows, pa.int64())
            self.add(chosen.column("key"), outcomes, chosen.column("reason"), tries)
            yield batch


def not_indexed(batch: pa.RecordBatch) -> pa.Array:
    return pc.not_equal(batch.column("outcome"), Outcome.INDEXED.value)


def not_qualified(batch: pa.RecordBatch) -> pa.Array:
    return pc.invert(batch.column("qualified"))


def warn_permanent_failures(batches: Iterable[pa.RecordBatch], warn: Callable[[str], None]) -> Iterator[pa.RecordBatch]:
    """One warning per permanent failure, naming the object and the reason code."""
    for batch in batches:
        failed = batch.filter(pc.equal(batch.column("outcome"), Outcome.FAILED_PERMANENT.value))
        for bucket, key, code in zip(
            failed.column("bucket").to_pylist(),
            failed.column("key").to_pylist(),
            reason_codes(failed.column("reason")).to_pylist(),
        ):
            warn(
                f"permanent failure: s3://{bucket}/{key}: {code} (not retried for this image; details in indexed_users)"
            )
        yield batch
