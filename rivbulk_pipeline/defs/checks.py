"""Asset checks that read back what was stored: the tables, the import history, the tags.

Each is partitioned like its asset, so its result is about one inventory date. The check on
`qualified_objects` is blocking: a table with doubled or lost decisions must not be indexed.
"""

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.model import Outcome
from ..core.rules.tags import is_true_marker, tag_lookup
from ..core.steps.indexing import HISTORY_STATUS_OF, TAG_NOT_WRITTEN
from ..core.steps.known_outcomes import combined_hash
from ..core.steps.qualify import history_keys
from ..core.steps.tables import BATCH_ROWS, open_table, released_batches
from ..resources.history import ImportHistoryResource
from ..resources.object_store import ObjectStoreResource
from ..settings import Settings
from .partitions import inventory_dates

_date_check = functools.partial(dg.asset_check, partitions_def=inventory_dates)  # a result per inventory date
_IDENTITY = ["bucket", "key", "version_id"]
_EXAMPLES = 10  # object keys shown in a failed check: locations only, never content
_TAG_READS_IN_FLIGHT = 4_096


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


@_date_check(
    asset="qualified_objects",
    blocking=True,
    description="Reads the stored tables back: one decision per candidate of the batch manifest, none doubled or lost.",
)
def qualified_objects_one_decision_per_candidate(
    context: dg.AssetCheckExecutionContext, settings: Settings, store: ObjectStoreResource
) -> dg.AssetCheckResult:
    partition = context.partition_key
    # Streamed as 64-bit fingerprints of the identities (8 bytes a row), so a bucket of 10M
    # objects is checked in about 160 MB; keys are read again only to name a problem's examples.
    decisions = _identity_prints(settings, store, "qualified_objects", partition)  # sorted
    # The candidates are streamed against the sorted decisions; `listed` marks each decision a
    # candidate has, so the two tables never sit in memory side by side.
    listed = np.zeros(len(decisions), dtype=bool)
    undecided: list[np.ndarray] = []
    candidates = 0
    for batch in _identity_batches(settings, store, "batch_manifest", partition, _IDENTITY):
        prints = _prints(batch)
        candidates += len(prints)
        at, found = _positions(decisions, prints)
        listed[at[found]] = True
        undecided.append(prints[~found])
    doubled = decisions[1:] == decisions[:-1]
    if doubled.any():  # a doubled decision is listed when the first of its equals is
        starts = np.flatnonzero(np.concatenate([[True], ~doubled]))
        listed = np.repeat(listed[starts], np.diff(np.append(starts, len(decisions))))
    problems = {
        "doubled": np.unique(decisions[1:][doubled]),
        "undecided": np.concatenate(undecided) if undecided else np.zeros(0, np.uint64),
        "unlisted": decisions[~listed],
    }
    return _result(
        partition,
        {
            name: _keys_of(settings, store, table, partition, prints)
            for name, (table, prints) in {
                "doubled": ("qualified_objects", problems["doubled"]),
                "undecided": ("batch_manifest", problems["undecided"]),
                "unlisted": ("qualified_objects", problems["unlisted"]),
            }.items()
        },  # fmt: skip
        candidates=candidates,
        decisions=len(decisions),
    )


def _identity_batches(
    settings: Settings, store: ObjectStoreResource, asset: str, partition: str, columns: list[str]
) -> Iterator[pa.RecordBatch]:
    location = settings.table_location(asset, partition)
    with open_table(store, location) as table:
        yield from released_batches(table.iter_batches(batch_size=BATCH_ROWS, columns=columns))


def _prints(batch: pa.RecordBatch) -> np.ndarray:
    return combined_hash((batch.column(name) for name in _IDENTITY), batch.num_rows)


def _identity_prints(settings: Settings, store: ObjectStoreResource, asset: str, partition: str) -> np.ndarray:
    """The table's identity fingerprints, sorted; filled and sorted in place (no copies)."""
    location = settings.table_location(asset, partition)
    with open_table(store, location) as table:
        prints = np.empty(table.metadata.num_rows, dtype=np.uint64)
        filled = 0
        for batch in released_batches(table.iter_batches(batch_size=BATCH_ROWS, columns=_IDENTITY)):
            prints[filled : filled + batch.num_rows] = _prints(batch)
            filled += batch.num_rows
    prints.sort()
    return prints


def _positions(sorted_prints: np.ndarray, prints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of `prints` is (the first of equals) in `sorted_prints`, and whether it is there."""
    if not len(sorted_prints):
        return np.zeros(len(prints), dtype=np.int64), np.zeros(len(prints), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_prints, prints), len(sorted_prints) - 1)
    return at, sorted_prints[at] == prints


def _contained(sorted_prints: np.ndarray, prints: np.ndarray) -> np.ndarray:
    return _positions(sorted_prints, prints)[1]


def _keys_of(
    settings: Settings, store: ObjectStoreResource, asset: str, partition: str, prints: np.ndarray
) -> list[str]:
    """The keys of the identities with one of these fingerprints, each identity once."""
    if not len(prints):
        return []
    wanted = np.sort(prints)
    found: dict[tuple, str] = {}
    for batch in _identity_batches(settings, store, asset, partition, _IDENTITY):
        for row in batch.filter(pa.array(_contained(wanted, _prints(batch)))).to_pylist():
            found[(row["bucket"], row["key"], row["version_id"] or "")] = row["key"]
    return list(found.values())


@_date_check(
    asset="indexed_users",
    description="Reads the stored tables back: one outcome per qualified object, none doubled or lost.",
)
def indexed_users_one_outcome_per_qualified_object(
    context: dg.AssetCheckExecutionContext, settings: Settings, store: ObjectStoreResource
) -> dg.AssetCheckResult:
    partition = context.partition_key
    # As fingerprints, like the check above: 8 bytes a row whatever the date's size.
    qualified = np.sort(np.concatenate([np.zeros(0, np.uint64)] + [
        _prints(batch.filter(pc.fill_null(batch.column("qualified"), False)))
        for batch in _identity_batches(settings, store, "qualified_objects", partition, [*_IDENTITY, "qualified"])
    ]))  # fmt: skip
    outcomes = _identity_prints(settings, store, "indexed_users", partition)  # sorted
    doubled = outcomes[1:][outcomes[1:] == outcomes[:-1]]
    problems = {
        "doubled": ("indexed_users", np.unique(doubled)),
        "without_outcome": ("qualified_objects", qualified[~_contained(outcomes, qualified)]),
        "not_qualified": ("indexed_users", outcomes[~_contained(qualified, outcomes)]),
    }
    return _result(
        partition,
        {name: _keys_of(settings, store, table, partition, prints) for name, (table, prints) in problems.items()},
        qualified=len(qualified),
        outcomes=len(outcomes),
    )


@_date_check(
    asset="indexed_users",
    description="Every recorded outcome is in the import history with the same status and ETag.",
)
def indexed_users_match_the_import_history(
    context: dg.AssetCheckExecutionContext,
    settings: Settings,
    store: ObjectStoreResource,
    history: ImportHistoryResource,
) -> dg.AssetCheckResult:
    partition = context.partition_key
    recorded_outcomes = pa.array([outcome.value for outcome in HISTORY_STATUS_OF])
    expected = pa.table(
        {"outcome": recorded_outcomes, "expected": pa.array([status.value for status in HISTORY_STATUS_OF.values()])}
    )
    mismatched: list[str] = []
    recorded = 0
    columns = [*_IDENTITY, "e_tag", "outcome"]
    for batch in _identity_batches(settings, store, "indexed_users", partition, columns):
        rows = pa.Table.from_batches([batch]).filter(pc.is_in(batch.column("outcome"), recorded_outcomes))
        recorded += rows.num_rows
        keys = history_keys(rows)
        asked = pa.Table.from_arrays(
            [*keys.columns, rows.column("key"), rows.column("e_tag"), rows.column("outcome")],
            names=[*keys.column_names, "key", "row_etag", "outcome"],
        )
        answer = history.lookup_table(keys).select(["object_uri", "version_id", "etag", "status"])
        joined = asked.join(answer, ["object_uri", "version_id"], join_type="left outer").join(expected, "outcome")
        # Later runs may have moved the record on: a transient failure retried, a newer image.
        moved_on = pc.or_(
            pc.equal(joined["outcome"], Outcome.FAILED_TRANSIENT.value),
            pc.not_equal(joined["etag"], joined["row_etag"]),
        )
        wrong_status = pc.and_(pc.invert(moved_on), pc.not_equal(joined["status"], joined["expected"]))
        missing = pc.is_null(joined["status"])
        mismatched += joined.filter(pc.or_(missing, pc.fill_null(wrong_status, False)))["key"].to_pylist()
    return _result(partition, {"not_in_history": mismatched}, recorded_outcomes=recorded)


@_date_check(
    asset="indexed_users",
    description="Every indexed object carries Indexed=true in its tags, or its row says why the tag was not written.",
)
def indexed_users_carry_the_indexed_tag(
    context: dg.AssetCheckExecutionContext, settings: Settings, store: ObjectStoreResource
) -> dg.AssetCheckResult:
    partition = context.partition_key
    indexed = explained = 0
    missing: list[str] = []

    def untagged(row: dict) -> bool:
        tags = store.get_tags(row["bucket"], row["key"], row["version_id"])
        return not is_true_marker(tag_lookup(tags, "Indexed"))

    # Batch by batch, with at most one chunk of tag reads in flight: memory stays flat however
    # many objects a date indexed (a first load may index millions).
    with ThreadPoolExecutor(max_workers=settings.qualify_concurrency, thread_name_prefix="check-tags") as pool:
        for batch in _identity_batches(settings, store, "indexed_users", partition, [*_IDENTITY, "outcome", "reason"]):
            batch = batch.filter(pc.equal(batch.column("outcome"), Outcome.INDEXED.value))
            said_why = pc.fill_null(pc.match_substring(batch.column("reason"), TAG_NOT_WRITTEN), False)
            indexed += batch.num_rows
            explained += pc.sum(said_why).as_py() or 0
            unexplained = batch.filter(pc.invert(said_why))
            for start in range(0, unexplained.num_rows, _TAG_READS_IN_FLIGHT):
                rows = unexplained.slice(start, _TAG_READS_IN_FLIGHT).to_pylist()
                missing += [row["key"] for row, bad in zip(rows, pool.map(untagged, rows)) if bad]
    return _result(partition, {"untagged": missing}, indexed=indexed, tag_not_written_explained=explained)


bulk_load_checks = [
    qualified_objects_one_decision_per_candidate,
    indexed_users_one_outcome_per_qualified_object,
    indexed_users_match_the_import_history,
    indexed_users_carry_the_indexed_tag,
]
