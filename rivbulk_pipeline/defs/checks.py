"""Asset checks that read back what was stored: the tables, the import history, the tags.

Each is partitioned like its asset, so its result is about one inventory date. The check on
`qualified_objects` is blocking: a table with doubled or lost decisions must not be indexed.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from ..core.indexing import TAG_NOT_WRITTEN
from ..core.model import HistoryStatus, ObjectRef, Outcome
from ..core.tables import open_table, table_location
from ..core.tags import is_true_marker, tag_lookup
from ..resources.history import ImportHistoryResource
from ..resources.object_store import ObjectStoreResource
from ..settings import Settings
from .partitions import inventory_dates

_IDENTITY = ["bucket", "key", "version_id"]
_EXAMPLES = 10  # object keys shown in a failed check: locations only, never content
_LOOKUP_CHUNK = 1_000
_STATUS_OF_OUTCOME = {
    Outcome.INDEXED.value: HistoryStatus.INDEXED,
    Outcome.FAILED_PERMANENT.value: HistoryStatus.FAILED_PERMANENT,
    Outcome.FAILED_TRANSIENT.value: HistoryStatus.FAILED_TRANSIENT,
}


def _read(settings: Settings, store: ObjectStoreResource, asset: str, partition: str, columns: list[str]) -> pa.Table:
    location = table_location(settings.output_bucket_name, settings.output_prefix, asset, partition)
    with open_table(store, location) as table:
        return table.read(columns=columns)


def _identities(table: pa.Table) -> pa.Table:
    """Rows per (bucket, key, version); a null version becomes "" so that joins match it."""
    keys = table.select(_IDENTITY)
    keys = keys.set_column(2, "version_id", pc.fill_null(keys["version_id"], ""))
    return keys.group_by(_IDENTITY).aggregate([([], "count_all")])


def _doubled(table: pa.Table) -> list[str]:
    counts = _identities(table)
    return counts.filter(pc.greater(counts["count_all"], 1))["key"].to_pylist()


def _missing(wanted: pa.Table, present: pa.Table) -> list[str]:
    """Identities of `wanted` that `present` lacks."""
    joined = _identities(wanted).join(_identities(present), keys=_IDENTITY, join_type="left anti")
    return joined["key"].to_pylist()


def _result(partition: str, problems: dict[str, list[str]], **counts: int) -> dg.AssetCheckResult:
    found = {name: keys for name, keys in problems.items() if keys}
    return dg.AssetCheckResult(
        passed=not found,
        metadata={
            "partition": partition,
            **counts,
            **{f"{name}_count": len(keys) for name, keys in found.items()},
            **{f"{name}_examples": dg.MetadataValue.json(sorted(keys)[:_EXAMPLES]) for name, keys in found.items()},
        },
    )


@dg.asset_check(
    asset="qualified_objects",
    partitions_def=inventory_dates,
    blocking=True,
    description="Reads the stored tables back: one decision per candidate of the batch manifest, none doubled or lost.",
)
def qualified_objects_one_decision_per_candidate(
    context: dg.AssetCheckExecutionContext, settings: Settings, store: ObjectStoreResource
) -> dg.AssetCheckResult:
    partition = context.partition_key
    decisions = _read(settings, store, "qualified_objects", partition, _IDENTITY)
    candidates = _read(settings, store, "batch_manifest", partition, _IDENTITY)
    return _result(
        partition,
        {"doubled": _doubled(decisions), "undecided": _missing(candidates, decisions), "unlisted": _missing(decisions, candidates)},
        candidates=candidates.num_rows,
        decisions=decisions.num_rows,
    )


@dg.asset_check(
    asset="indexed_users",
    partitions_def=inventory_dates,
    description="Reads the stored tables back: one outcome per qualified object, none doubled or lost.",
)
def indexed_users_one_outcome_per_qualified_object(
    context: dg.AssetCheckExecutionContext, settings: Settings, store: ObjectStoreResource
) -> dg.AssetCheckResult:
    partition = context.partition_key
    decided = _read(settings, store, "qualified_objects", partition, [*_IDENTITY, "qualified"])
    qualified = decided.filter(pc.fill_null(decided["qualified"], False)).select(_IDENTITY)
    outcomes = _read(settings, store, "indexed_users", partition, _IDENTITY)
    return _result(
        partition,
        {"doubled": _doubled(outcomes), "without_outcome": _missing(qualified, outcomes), "not_qualified": _missing(outcomes, qualified)},
        qualified=qualified.num_rows,
        outcomes=outcomes.num_rows,
    )


def _chunks(rows: Sequence[dict], size: int) -> Iterator[Sequence[dict]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


@dg.asset_check(
    asset="indexed_users",
    partitions_def=inventory_dates,
    description="Every recorded outcome is in the import history with the same status and ETag.",
)
def indexed_users_match_the_import_history(
    context: dg.AssetCheckExecutionContext, settings: Settings, store: ObjectStoreResource, history: ImportHistoryResource
) -> dg.AssetCheckResult:
    partition = context.partition_key
    table = _read(settings, store, "indexed_users", partition, [*_IDENTITY, "e_tag", "outcome"])
    recorded = table.filter(pc.is_in(table["outcome"], pa.array(list(_STATUS_OF_OUTCOME)))).to_pylist()
    mismatched: list[str] = []
    for chunk in _chunks(recorded, _LOOKUP_CHUNK):
        refs = [ObjectRef(r["bucket"], r["key"], r["version_id"]) for r in chunk]
        found = history.lookup(refs)
        for ref, row in zip(refs, chunk):
            record = found.get(ref)
            if record is None:
                mismatched.append(row["key"])
                continue
            # Later runs may have moved the record on: a transient failure retried, a newer image.
            moved_on = row["outcome"] == Outcome.FAILED_TRANSIENT.value or record.etag != row["e_tag"]
            if not moved_on and record.status != _STATUS_OF_OUTCOME[row["outcome"]]:
                mismatched.append(row["key"])
    return _result(partition, {"not_in_history": mismatched}, recorded_outcomes=len(recorded))


@dg.asset_check(
    asset="indexed_users",
    partitions_def=inventory_dates,
    description="Every indexed object carries Indexed=true in its tags, or its row says why the tag was not written.",
)
def indexed_users_carry_the_indexed_tag(
    context: dg.AssetCheckExecutionContext, settings: Settings, store: ObjectStoreResource
) -> dg.AssetCheckResult:
    partition = context.partition_key
    table = _read(settings, store, "indexed_users", partition, [*_IDENTITY, "outcome", "reason"])
    indexed = table.filter(pc.equal(table["outcome"], Outcome.INDEXED.value))
    explained = pc.fill_null(pc.match_substring(indexed["reason"], TAG_NOT_WRITTEN), False)
    to_read = indexed.filter(pc.invert(explained)).to_pylist()

    def untagged(row: dict) -> bool:
        tags = store.get_tags(row["bucket"], row["key"], row["version_id"])
        return not is_true_marker(tag_lookup(tags, "Indexed"))

    with ThreadPoolExecutor(max_workers=settings.qualify_concurrency, thread_name_prefix="check-tags") as pool:
        missing = [row["key"] for row, bad in zip(to_read, pool.map(untagged, to_read)) if bad]
    return _result(
        partition,
        {"untagged": missing},
        indexed=indexed.num_rows,
        tag_not_written_explained=indexed.num_rows - len(to_read),
    )


bulk_load_checks = [
    qualified_objects_one_decision_per_candidate,
    indexed_users_one_outcome_per_qualified_object,
    indexed_users_match_the_import_history,
    indexed_users_carry_the_indexed_tag,
]
