"""Final outcomes known without asking the import history, as compact fingerprints.

An object whose key, version and ETag are the same as in the previous loaded date's tables,
with a final outcome there (indexed, or failed permanently), cannot have changed: the history
refuses any claim on a final outcome for the same ETag. Such objects need no lookup at all.
Everything else (not final, a new ETag, absent from that date, or no such date) still
consults the history.

The shortcut is only a shortcut: the history's change log names every record that left a final
outcome since the previous date read the history (an operator's correction, another run, a row
deleted by hand); those objects ask the history again, which then decides. When the log does not
reach back that far, nothing is taken from the previous date.

Memory stays small at any bucket size: one 64-bit fingerprint per known object (80 MB at 10M
objects), sorted once in place and searched per batch with numpy. A false
match needs two different (bucket, key, version, ETag) rows to share a 64-bit fingerprint:
with 10M known objects and 100k new ones a day, about one chance in 20 million per run.
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..model import NULL_VERSION, Outcome, Reason
from ..ports import ObjectStore
from .tables import open_table, released_batches, table_location

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FINGERPRINT_COLUMNS = ("bucket", "key", "version_id", "e_tag")
# The Parquet schema metadata of qualified_objects: when that date's qualification read the history.
HISTORY_READ_AT = b"rivbulk.history_read_at"
_CLOCK_SKEW_SECONDS = 300.0  # the change log's clock (SQLite's, DynamoDB's) against ours


class Known(enum.IntEnum):
    """What the previous date says about an object; 0 means ask the history."""

    UNKNOWN = 0
    INDEXED = 1
    FAILED_PERMANENT = 2


def _string_hash(column: pa.Array) -> np.ndarray:
    """FNV-1a over each value's UTF-8 bytes, all rows at once: one numpy pass per byte position,
    over the rows still that long (rows sorted by length, so that set is a prefix)."""
    column = pc.fill_null(column.cast(pa.string()), "")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32, count=n + 1, offset=4 * column.offset)
    data_buffer = column.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    starts = offsets[:-1][order].astype(np.int64)
    longest = int(lengths.max()) if n else 0
    # rows longer than j: a prefix of `order`, its length found by a search on the sorted lengths
    still_long = np.searchsorted(-lengths[order], -np.arange(longest), side="left")
    hashes = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    for j in range(longest):
        k = still_long[j]
        hashes[:k] ^= data[starts[:k] + j]
        hashes[:k] *= _FNV_PRIME
    result = np.empty(n, dtype=np.uint64)
    result[order] = hashes
    return result


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def combined_hash(columns: Iterable[pa.Array], rows: int) -> np.ndarray:
    """One 64-bit fingerprint per row of these string columns together (null reads as empty)."""
    with np.errstate(over="ignore"):
        result = np.zeros(rows, dtype=np.uint64)
        for column in columns:
            result = _mix(result * _GOLDEN + _string_hash(column))
    return result


def fingerprints(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """One 64-bit fingerprint per row of (bucket, key, version_id, e_tag); a null version and
    an empty one are the same (S3's null version)."""
    return combined_hash((batch.column(name) for name in _FINGERPRINT_COLUMNS), batch.num_rows)


def _search(sorted_prints: np.ndarray, prints: np.ndarray) -> np.ndarray:
    """Which of `prints` are in `sorted_prints`. The queries are sorted first: a search in that
    order walks the big array forwards instead of jumping about it (several times faster)."""
    if not len(sorted_prints) or not len(prints):
        return np.zeros(len(prints), dtype=bool)
    order = np.argsort(prints)
    queries = prints[order]
    at = np.minimum(np.searchsorted(sorted_prints, queries), len(sorted_prints) - 1)
    found = np.empty(len(prints), dtype=bool)
    found[order] = sorted_prints[at] == queries
    return found


def history_keys(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """The import history's keys of these rows (bucket, key, version_id): object_uri and version_id."""
    version = pc.fill_null(batch.column("version_id"), "")
    return pa.table(
        {
            "object_uri": pc.binary_join_element_wise("s3:/", batch.column("bucket"), batch.column("key"), "/"),
            "version_id": pc.if_else(pc.equal(version, ""), NULL_VERSION, version),
        }
    )


def key_prints(keys: pa.Table) -> np.ndarray:
    """One fingerprint per history key (object_uri, version_id)."""
    return combined_hash((keys.column("object_uri"), keys.column("version_id")), keys.num_rows)


@dataclass(frozen=True)
class KnownOutcomes:
    """Sorted fingerprints of the objects known indexed and known failed permanently."""

    indexed: np.ndarray  # uint64, sorted
    failed: np.ndarray  # uint64, sorted
    source: str  # where they came from, e.g. "dt=2026-03-01"
    changed: np.ndarray = field(
        default_factory=lambda: np.zeros(0, np.uint64)
    )  # sorted key prints whose record changed since: not known

    def without(self, changed_keys: pa.Table) -> "KnownOutcomes":
        """The same, except for these history keys (their records changed since)."""
        return KnownOutcomes(self.indexed, self.failed, self.source, np.sort(key_prints(changed_keys)))

    @classmethod
    def build(cls, parts: Iterable[tuple[np.ndarray, Known]], source: str, capacity: int = 0) -> "KnownOutcomes":
        """From (fingerprints, what they are) parts. With `capacity` (an upper bound of the
        total) one array is filled in place, indexed from the front and failed from the back,
        and each end sorted in place: no copies, no index arrays."""
        parts = iter(parts)
        if not capacity:
            parts = list(parts)
            capacity = sum(len(p) for p, _ in parts)
        both = np.empty(capacity, dtype=np.uint64)
        front, back = 0, capacity
        for prints, known in parts:
            if known == Known.INDEXED:
                both[front : front + len(prints)] = prints
                front += len(prints)
            else:
                both[back - len(prints) : back] = prints
                back -= len(prints)
        indexed, failed = both[:front], both[back:]
        indexed.sort()
        failed.sort()
        return cls(indexed, failed, source)

    def __len__(self) -> int:
        return len(self.indexed) + len(self.failed)

    def match(self, batch: pa.RecordBatch) -> np.ndarray:
        """Known value per row (0: ask the history). Rows without an ETag are never known."""
        result = np.zeros(batch.num_rows, dtype=np.uint8)
        if not len(self) or not batch.num_rows:
            return result
        prints = fingerprints(batch)
        has_etag = np.asarray(pc.is_valid(batch.column("e_tag")))
        result[_search(self.indexed, prints) & has_etag] = Known.INDEXED
        result[_search(self.failed, prints) & has_etag] = Known.FAILED_PERMANENT
        if len(self.changed):
            result[_search(self.changed, key_prints(history_keys(batch)))] = Known.UNKNOWN
        return result


def _final_rows(batch: pa.RecordBatch, column: str, values: dict[str, Known]) -> Iterator[tuple[np.ndarray, Known]]:
    decided = batch.column(column)
    for value, known in values.items():
        rows = batch.filter(pc.and_(pc.equal(decided, value), pc.is_valid(batch.column("e_tag"))))
        if rows.num_rows:
            yield fingerprints(rows), known


# Which rows of each stored table are final outcomes of the history for that ETag.
_FINAL_IN = {
    "qualified_objects": (
        "reason",
        {Reason.ALREADY_INDEXED.value: Known.INDEXED, Reason.PREVIOUSLY_FAILED.value: Known.FAILED_PERMANENT},
    ),
    "indexed_users": (
        "outcome",
        {Outcome.INDEXED.value: Known.INDEXED, Outcome.FAILED_PERMANENT.value: Known.FAILED_PERMANENT},
    ),
}


def previous_loaded_date(store: ObjectStore, bucket: str, prefix: str, partition: str) -> Optional[str]:
    """The latest date before `partition` whose qualified_objects table is stored, if any."""
    folder = table_location(bucket, prefix, "qualified_objects", partition).key.rsplit("/", 2)[0] + "/"
    dates = sorted(
        (p[len(folder) :].rstrip("/").removeprefix("dt=") for p in store.list_prefixes(bucket, folder)), reverse=True
    )
    for date in dates:
        if date < partition and store.exists(bucket, table_location(bucket, prefix, "qualified_objects", date).key):
            return date
    return None


def history_read_at(store: ObjectStore, bucket: str, prefix: str, date: str) -> float:
    """When `date`'s qualification read the history (its table's metadata); for a table written
    before that was recorded, when the table was written."""
    location = table_location(bucket, prefix, "qualified_objects", date)
    with open_table(store, location) as table:
        stamp = (table.schema_arrow.metadata or {}).get(HISTORY_READ_AT)
    if stamp is not None:
        return float(stamp)
    return store.head(location.bucket, location.key).last_modified.timestamp()


def load_previous_outcomes(
    store: ObjectStore,
    bucket: str,
    prefix: str,
    partition: str,
    batch_rows: int = 65_536,
    changes_since: Optional[Callable[[float], Optional[pa.Table]]] = None,
) -> Optional[KnownOutcomes]:
    """The final outcomes in the previous loaded date's qualified_objects and indexed_users
    tables, less the objects whose history record changed since (`changes_since`, the history's
    change log); None when no earlier date was loaded or the log cannot say what changed."""
    date = previous_loaded_date(store, bucket, prefix, partition)
    if date is None:
        return None
    changed = None
    if changes_since is not None:
        read_at = history_read_at(store, bucket, prefix, date)
        # A margin for clocks; a log started within it still covers the previous date's read.
        changed = changes_since(read_at - _CLOCK_SKEW_SECONDS)
        if changed is None:
            changed = changes_since(read_at)
        if changed is None:
            return None
    tables = [
        (table_location(bucket, prefix, asset, date), column, values) for asset, (column, values) in _FINAL_IN.items()
    ]
    # A missing indexed_users means indexing of that date never finished: its qualified rows are not final.
    tables = [t for t in tables if store.exists(t[0].bucket, t[0].key)]
    with contextlib.ExitStack() as stack:
        opened = [
            (stack.enter_context(open_table(store, location)), column, values) for location, column, values in tables
        ]
        capacity = sum(table.metadata.num_rows for table, _, _ in opened)
        parts = (
            part
            for table, column, values in opened
            for batch in released_batches(
                table.iter_batches(batch_size=batch_rows, columns=[*_FINGERPRINT_COLUMNS, column])
            )
            for part in _final_rows(batch, column, values)
        )
        known = KnownOutcomes.build(parts, source=f"dt={date}", capacity=capacity)
    return known.without(changed) if changed is not None and changed.num_rows else known
