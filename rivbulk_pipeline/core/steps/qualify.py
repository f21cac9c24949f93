"""Qualification: decide, for every candidate image, whether it is registered and why not.

Per batch, in columns: objects whose final outcome for this ETag is known from the previous
loaded date need no call; one history lookup for the rest (an object already indexed with the
same ETag costs no other call); then at most one tag read per remaining object, in a bounded
pool of workers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import AccessDenied, DeploymentError, ObjectNotFound, ObjectTooLarge, RegistrationRejected, StoreError
from ..model import QUALIFIED_SCHEMA, HistoryStatus, ObjectRef, Reason
from ..ports import ImportHistory, ObjectStore, RegistrationProvider
from ..rules.images import MAX_IMAGE_BYTES, TOO_LARGE
from ..rules.reasons import reason_token
from ..rules.tags import is_true_marker, tag_lookup
from ..rules.user_ids import RIV_USER_ID_PATTERN, registry_user_id, user_id_problem
from .known_outcomes import Known, KnownOutcomes, history_keys
from .progress import Progress

_READS_QUEUED = 2_048
_FAILED_BEFORE = ": failed permanently before with this ETag ("
# The detail's end for a final row, by kind: indexed by the history / by the previous date,
# failed by the history (its reason follows) / by the previous date.
_FINAL_SUFFIXES = pa.array(
    [
        ": already indexed (import history, same ETag)",
        ": already indexed (the previous date's outcome, same ETag)",
        _FAILED_BEFORE,
        _FAILED_BEFORE + "the previous date's outcome; the reason is in the import history)",
    ]
)


@dataclass(frozen=True)
class Decision:
    qualified: bool
    reason: str  # a Reason value, or a provider's own token (see core.rules.reasons)
    detail: str
    user_id: Optional[str] = None
    properties_ref: Optional[str] = None


def decide_from_tags(
    ref: ObjectRef, tags: Mapping[str, str], provider: RegistrationProvider, user_id_pattern: str = RIV_USER_ID_PATTERN
) -> Decision:
    """The seed's tag rules, with case-insensitive keys and `true` markers; the user id checked
    against the registry's rule and recorded as the registry keys it (lower-cased)."""
    if is_true_marker(tag_lookup(tags, "Ignore")):
        return Decision(False, Reason.IGNORED, f"{ref}: tagged Ignore=true")
    if is_true_marker(tag_lookup(tags, "Indexed")):
        return Decision(False, Reason.INDEXED_TAG, f"{ref}: tagged Indexed=true")
    try:
        info = provider.registration_for(ref, tags)
        if info is None:
            return Decision(False, Reason.NO_USER_ID, f"{ref}: no UserId tag")
        problem = user_id_problem(info.user_id, user_id_pattern)
        if problem:
            return Decision(False, Reason.BAD_USER_ID, f"{ref}: UserId breaks the registry's id rule: {problem}")
        if info.properties_ref:
            provider.load_properties(info.properties_ref)  # validated now, loaded again when registering
    except RegistrationRejected as rejected:
        detail = rejected.detail if str(ref) in rejected.detail else f"{ref}: {rejected.detail}"
        reason = reason_token(rejected.reason)
        if reason != getattr(rejected.reason, "value", rejected.reason):
            detail += " (the provider's reason was not a short lower-case token, so it is recorded as provider_error)"
        return Decision(False, reason, detail)
    except ObjectNotFound as exc:
        return Decision(False, Reason.PROPERTIES_NOT_FOUND, f"{ref}: properties file not found: {exc}")
    except ObjectTooLarge as exc:  # a provider of one's own that reads with a bound
        return Decision(False, Reason.BAD_PROPERTIES, f"{ref}: properties file: {exc}")
    except StoreError as exc:
        return _store_error_decision(ref, exc, "reading properties")
    except DeploymentError:  # e.g. a secret the provider's options name cannot be read: stop the run
        raise
    except Exception as exc:  # a user's provider may raise anything; it must not fail the others
        return Decision(False, Reason.PROVIDER_ERROR, f"{ref}: registration provider raised {type(exc).__name__}")
    return Decision(True, Reason.QUALIFIED, "", registry_user_id(info.user_id), info.properties_ref)


def decide_one(
    ref: ObjectRef, store: ObjectStore, provider: RegistrationProvider, user_id_pattern: str = RIV_USER_ID_PATTERN
) -> Decision:
    """Read the object's tags once and apply the rules."""
    try:
        tags = store.get_tags(ref.bucket, ref.key, ref.version_id)
    except StoreError as exc:
        return _store_error_decision(ref, exc, "reading tags")
    return decide_from_tags(ref, tags, provider, user_id_pattern)


def _store_error_decision(ref: ObjectRef, exc: StoreError, doing: str) -> Decision:
    if isinstance(exc, ObjectNotFound):
        return Decision(False, Reason.OBJECT_NOT_FOUND, f"{ref}: listed in the inventory but gone ({doing})")
    if isinstance(exc, AccessDenied):
        return Decision(False, Reason.ACCESS_DENIED, f"{ref}: access denied {doing}")
    return Decision(
        False, Reason.TRANSIENT_ERROR, f"{ref}: {doing} failed ({type(exc).__name__}); the next run retries"
    )


def qualify_candidates(
    candidate_batches: Iterable[pa.RecordBatch],
    *,
    store: ObjectStore,
    provider: RegistrationProvider,
    history: ImportHistory,
    concurrency: int = 32,
    progress: Optional[Progress] = None,
    known: Optional[KnownOutcomes] = None,
    stats: Optional[QualifyStats] = None,
    user_id_pattern: str = RIV_USER_ID_PATTERN,
) -> Iterator[pa.RecordBatch]:
    """Yield one QUALIFIED_SCHEMA batch per candidate batch, rows in the same order.

    Rows are decided in columns where the previous date (`known`) or the import history says
    the outcome for this ETag is final; only the others are looked at one by one (a tag read).
    """
    stats = stats if stats is not None else QualifyStats()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="qualify") as pool:
        for batch in candidate_batches:
            # S3 Inventory's ETag field is optional: without it, the object's own ETag (HEAD) decides.
            batch, unreadable = _fill_missing_etags(batch, store, pool)
            unreadable = {**_too_large(batch), **unreadable}  # decided without a tag read either way
            final = known.match(batch) if known is not None else np.zeros(batch.num_rows, np.uint8)
            stats.known_before += int(np.count_nonzero(final))
            from_history = np.zeros(batch.num_rows, dtype=bool)
            history_reasons = pa.nulls(batch.num_rows, pa.string())
            ask = np.flatnonzero((final == Known.UNKNOWN) & np.asarray(pc.is_valid(batch.column("e_tag"))))
            if len(ask):
                stats.history_calls += 1
                stats.history_keys += len(ask)
                final, from_history, history_reasons = _history_decisions(batch, ask, history, final)
            pending = np.flatnonzero(final == Known.UNKNOWN)
            decisions = list(_one_by_one(batch, pending, unreadable, store, provider, pool, stats, user_id_pattern))
            if progress:
                progress.advance(batch.num_rows)
            yield _decisions_batch(batch, final, from_history, history_reasons, pending, decisions)


def _one_by_one(
    batch: pa.RecordBatch,
    pending: np.ndarray,
    unreadable: dict[int, Decision],
    store: ObjectStore,
    provider: RegistrationProvider,
    pool: ThreadPoolExecutor,
    stats: QualifyStats,
    user_id_pattern: str,
) -> Iterator[Decision]:
    """The decisions of the `pending` rows, in order: a tag read each, unless its HEAD failed.
    At most _READS_QUEUED reads are queued at a time: a queued read holds a future, a reference
    and its result, so a batch of new objects would otherwise cost memory in proportion."""
    for start in range(0, len(pending), _READS_QUEUED):
        rows = [int(i) for i in pending[start : start + _READS_QUEUED]]
        to_read = [i for i in rows if i not in unreadable]
        stats.tag_reads += len(to_read)
        refs = _refs(batch.take(pa.array(to_read, pa.int64()))) if to_read else []
        read = dict(zip(to_read, pool.map(lambda ref: decide_one(ref, store, provider, user_id_pattern), refs)))
        yield from (read.get(i) or unreadable[i] for i in rows)


@dataclass
class QualifyStats:
    """What qualification asked of whom (for asset metadata and the benchmark)."""

    known_before: int = 0  # decided by the previous date's tables, no call at all
    history_calls: int = 0  # final_outcomes calls (one per batch that had something to ask)
    history_keys: int = 0  # keys asked of the history
    tag_reads: int = 0  # objects decided one by one (tag read)


def current_etag(ref: ObjectRef, store: ObjectStore) -> "str | Decision":
    """The object's ETag from a HEAD, or the decision when it cannot be read."""
    try:
        return store.head(ref.bucket, ref.key, ref.version_id).etag
    except StoreError as exc:
        return _store_error_decision(ref, exc, "reading its ETag (the report lists none)")


def _fill_missing_etags(
    batch: pa.RecordBatch, store: ObjectStore, pool: ThreadPoolExecutor
) -> tuple[pa.RecordBatch, dict[int, Decision]]:
    """The batch with every listed-without-ETag row's ETag read by a HEAD, and the decisions
    for the rows whose HEAD failed (their ETag stays null)."""
    etag = batch.column("e_tag")
    missing = pc.fill_null(pc.equal(etag, ""), True)
    unlisted = np.flatnonzero(np.asarray(missing))
    if not len(unlisted):
        return batch, {}
    found = list(pool.map(lambda ref: current_etag(ref, store), _refs(batch.take(pa.array(unlisted, pa.int64())))))
    filled = pc.replace_with_mask(
        etag, missing, pa.array([f if isinstance(f, str) else None for f in found], pa.string())
    )
    failed = {int(i): f for i, f in zip(unlisted, found) if isinstance(f, Decision)}
    return batch.set_column(batch.schema.get_field_index("e_tag"), "e_tag", filled), failed


def _too_large(batch: pa.RecordBatch) -> dict[int, Decision]:
    """The decisions for the rows whose listed Size is over what the registry takes: such an
    image is refused here, never read (the history still answers first for one indexed before)."""
    over = np.flatnonzero(np.asarray(pc.fill_null(pc.greater(batch.column("size"), MAX_IMAGE_BYTES), False)))
    if not len(over):
        return {}
    sizes = batch.column("size").take(pa.array(over, pa.int64())).to_pylist()
    refs = _refs(batch.take(pa.array(over, pa.int64())))
    return {
        int(i): Decision(
            False,
            TOO_LARGE,
            f"{ref}: image is {size:,} bytes (the inventory's Size), over the {MAX_IMAGE_BYTES:,}-byte limit; not read",
        )
        for i, ref, size in zip(over, refs, sizes)
    }


def _refs(batch: pa.RecordBatch) -> list[ObjectRef]:
    columns = (batch.column(name).to_pylist() for name in ("bucket", "key", "version_id"))
    return [ObjectRef(bucket, key, version) for bucket, key, version in zip(*columns)]


def _uri(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    return pc.binary_join_element_wise("s3:/", batch.column("bucket"), batch.column("key"), "/")


def _history_decisions(
    batch: pa.RecordBatch, ask: np.ndarray, history: ImportHistory, final: np.ndarray
) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """Ask the history in one call which rows `ask` are final for their ETag; mark those."""
    asked = batch.take(pa.array(ask, pa.int64()))
    objects = history_keys(asked).append_column("etag", asked.column("e_tag"))
    answer = history.final_outcomes(objects)
    rows = objects.append_column("row", pa.array(ask, pa.int64())).join(
        answer.select(["object_uri", "version_id", "status", "reason"]), ["object_uri", "version_id"], join_type="inner"
    )
    final = final.copy()
    from_history = np.zeros(batch.num_rows, dtype=bool)
    reasons: list[Optional[str]] = [None] * batch.num_rows
    for status, value in (
        (HistoryStatus.INDEXED, Known.INDEXED),
        (HistoryStatus.FAILED_PERMANENT, Known.FAILED_PERMANENT),
    ):
        hits = rows.filter(pc.equal(rows.column("status"), status.value))
        at = hits.column("row").to_numpy()
        final[at] = value
        from_history[at] = True
        if value == Known.FAILED_PERMANENT:
            for row, reason in zip(at, hits.column("reason").to_pylist()):
                reasons[row] = reason
    return final, from_history, pa.array(reasons, pa.string())


def _decisions_batch(
    batch: pa.RecordBatch,
    final: np.ndarray,
    from_history: np.ndarray,
    history_reasons: pa.Array,
    pending: np.ndarray,
    decisions: list[Decision],
) -> pa.RecordBatch:
    """Columns for every row: final outcomes in columns, the `pending` rows from `decisions`."""
    where = _uri(batch)
    where = pc.if_else(
        pc.is_null(batch.column("version_id")),
        where,
        pc.binary_join_element_wise(where, batch.column("version_id"), "?versionId="),
    )
    indexed = final == Known.INDEXED
    failed = final == Known.FAILED_PERMANENT
    reason = pc.if_else(
        pa.array(indexed),
        Reason.ALREADY_INDEXED.value,
        pc.if_else(pa.array(failed), Reason.PREVIOUSLY_FAILED.value, pa.scalar(None, pa.string())),
    )
    # One suffix per row, taken from a few fixed texts (whole columns of each would cost tens of
    # MB per batch); only a failure the history recorded carries its own reason.
    ending = np.where(indexed, np.where(from_history, 0, 1), np.where(from_history, 2, 3))
    suffix = _FINAL_SUFFIXES.take(pa.array(ending, pa.int8()))
    told = ending == 2
    if told.any():
        said = pc.binary_join_element_wise(
            _FAILED_BEFORE, pc.fill_null(history_reasons.filter(pa.array(told)), ""), ")", ""
        )
        suffix = pc.replace_with_mask(suffix, pa.array(told), said)
    detail = pc.binary_join_element_wise(where, suffix, "")
    qualified = pa.array(np.zeros(batch.num_rows, dtype=bool))
    user_id = pa.nulls(batch.num_rows, pa.string())
    properties_ref = pa.nulls(batch.num_rows, pa.string())
    if len(pending):
        mask = np.zeros(batch.num_rows, dtype=bool)
        mask[pending] = True
        mask = pa.array(mask)

        def fill(column: pa.Array, values: list, kind: pa.DataType) -> pa.Array:
            return pc.replace_with_mask(column, mask, pa.array(values, kind))

        qualified = fill(qualified, [d.qualified for d in decisions], pa.bool_())
        reason = fill(reason, [str(d.reason) for d in decisions], pa.string())
        detail = fill(detail, [d.detail for d in decisions], pa.string())
        user_id = fill(user_id, [d.user_id for d in decisions], pa.string())
        properties_ref = fill(properties_ref, [d.properties_ref for d in decisions], pa.string())
    columns = {name: batch.column(name) for name in ("bucket", "key", "version_id", "size", "e_tag")}
    columns.update(qualified=qualified, reason=reason, detail=detail, user_id=user_id, properties_ref=properties_ref)
    return pa.RecordBatch.from_pydict(columns, schema=QUALIFIED_SCHEMA)
