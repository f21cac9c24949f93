"""Qualification: decide, for every candidate image, whether it is registered and why not.

One history lookup per batch (an object already indexed with the same ETag costs no other
call), then at most one tag read per remaining object, in a bounded pool of workers.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional

import pyarrow as pa

from .errors import AccessDenied, ObjectNotFound, RegistrationRejected, StoreError
from .images import validate_user_id
from .model import QUALIFIED_SCHEMA, HistoryRecord, HistoryStatus, ObjectRef, Reason
from .ports import ImportHistory, ObjectStore, RegistrationProvider
from .progress import Progress
from .reasons import reason_token
from .tags import is_true_marker, tag_lookup


@dataclass(frozen=True)
class Decision:
    qualified: bool
    reason: str  # a Reason value, or a provider's own token (see core.reasons)
    detail: str
    user_id: Optional[str] = None
    properties_ref: Optional[str] = None


def decide_from_history(ref: ObjectRef, etag: Optional[str], record: Optional[HistoryRecord]) -> Optional[Decision]:
    """A decision the import history alone can make, or None when the tags must be read."""
    if record is None or record.etag != etag:
        return None  # never seen, or a new image under the same key
    if record.status == HistoryStatus.INDEXED:
        return Decision(False, Reason.ALREADY_INDEXED, f"{ref}: already indexed (import history, same ETag)")
    if record.status == HistoryStatus.FAILED_PERMANENT:
        return Decision(
            False, Reason.PREVIOUSLY_FAILED, f"{ref}: failed permanently before with this ETag ({record.reason})"
        )
    return None


def decide_from_tags(ref: ObjectRef, tags: Mapping[str, str], provider: RegistrationProvider) -> Decision:
    """The seed's tag rules, with case-insensitive keys and `true` markers."""
    if is_true_marker(tag_lookup(tags, "Ignore")):
        return Decision(False, Reason.IGNORED, f"{ref}: tagged Ignore=true")
    if is_true_marker(tag_lookup(tags, "Indexed")):
        return Decision(False, Reason.INDEXED_TAG, f"{ref}: tagged Indexed=true")
    try:
        info = provider.registration_for(ref, tags)
        if info is None:
            return Decision(False, Reason.NO_USER_ID, f"{ref}: no UserId tag")
        problem = validate_user_id(info.user_id)
        if problem:
            return Decision(False, Reason.BAD_USER_ID, f"{ref}: UserId {problem}")
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
    except StoreError as exc:
        return _store_error_decision(ref, exc, "reading properties")
    except Exception as exc:  # a user's provider may raise anything; it must not fail the others
        return Decision(False, Reason.PROVIDER_ERROR, f"{ref}: registration provider raised {type(exc).__name__}")
    return Decision(True, Reason.QUALIFIED, "", info.user_id, info.properties_ref)


def decide_one(ref: ObjectRef, store: ObjectStore, provider: RegistrationProvider) -> Decision:
    """Read the object's tags once and apply the rules."""
    try:
        tags = store.get_tags(ref.bucket, ref.key, ref.version_id)
    except StoreError as exc:
        return _store_error_decision(ref, exc, "reading tags")
    return decide_from_tags(ref, tags, provider)


def _store_error_decision(ref: ObjectRef, exc: StoreError, doing: str) -> Decision:
    if isinstance(exc, ObjectNotFound):
        return Decision(False, Reason.OBJECT_NOT_FOUND, f"{ref}: listed in the inventory but gone ({doing})")
    if isinstance(exc, AccessDenied):
        return Decision(False, Reason.ACCESS_DENIED, f"{ref}: access denied {doing}")
    return Decision(False, Reason.TRANSIENT_ERROR, f"{ref}: {doing} failed ({type(exc).__name__}); the next run retries")


def qualify_candidates(
    candidate_batches: Iterable[pa.RecordBatch],
    *,
    store: ObjectStore,
    provider: RegistrationProvider,
    history: ImportHistory,
    concurrency: int = 32,
    progress: Optional[Progress] = None,
) -> Iterator[pa.RecordBatch]:
    """Yield one QUALIFIED_SCHEMA batch per candidate batch, rows in the same order."""
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="qualify") as pool:
        for batch in candidate_batches:
            rows = batch.to_pylist()
            refs = [ObjectRef(r["bucket"], r["key"], r["version_id"]) for r in rows]
            etags: list[Optional[str]] = [r["e_tag"] for r in rows]
            decisions: list[Optional[Decision]] = [None] * len(rows)
            # S3 Inventory's ETag field is optional: without it, the object's own ETag (HEAD) decides.
            unlisted = [i for i, etag in enumerate(etags) if not etag]
            for i, found in zip(unlisted, pool.map(lambda i: current_etag(refs[i], store), unlisted)):
                if isinstance(found, Decision):
                    decisions[i] = found
                else:
                    etags[i] = found
            open_rows = [i for i, decision in enumerate(decisions) if decision is None]
            known = history.lookup([refs[i] for i in open_rows]) if open_rows else {}
            for i in open_rows:
                decisions[i] = decide_from_history(refs[i], etags[i], known.get(refs[i]))
            pending = [i for i, decision in enumerate(decisions) if decision is None]
            for i, decision in zip(pending, pool.map(lambda i: decide_one(refs[i], store, provider), pending)):
                decisions[i] = decision
            if progress:
                progress.advance(len(rows))
            yield _decisions_batch(batch, decisions, etags if unlisted else None)


def current_etag(ref: ObjectRef, store: ObjectStore) -> "str | Decision":
    """The object's ETag from a HEAD, or the decision when it cannot be read."""
    try:
        return store.head(ref.bucket, ref.key, ref.version_id).etag
    except StoreError as exc:
        return _store_error_decision(ref, exc, "reading its ETag (the report lists none)")


def _decisions_batch(batch: pa.RecordBatch, decisions: list, etags: Optional[list] = None) -> pa.RecordBatch:
    columns = {name: batch.column(name) for name in ("bucket", "key", "version_id", "size", "e_tag")}
    if etags is not None:
        columns["e_tag"] = pa.array(etags, pa.string())
    columns.update(
        qualified=pa.array([d.qualified for d in decisions], pa.bool_()),
        reason=pa.array([str(d.reason) for d in decisions], pa.string()),
        detail=pa.array([d.detail for d in decisions], pa.string()),
        user_id=pa.array([d.user_id for d in decisions], pa.string()),
        properties_ref=pa.array([d.properties_ref for d in decisions], pa.string()),
    )
    return pa.RecordBatch.from_pydict(columns, schema=QUALIFIED_SCHEMA)
