"""Indexing: register each qualified object through the gateway, exactly once.

For each object: claim it in the import history (a conditional write, so two runs never
both register it), read the image, load the properties, call the gateway at the configured
rate with retries for transient failures, record the outcome, and only after a success merge
`Indexed=True` into the object's tags. A run killed anywhere leaves either no claim, an
expired-able claim (retried by the next run), or a final outcome.
"""
from __future__ import annotations

import random
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Optional

import pyarrow as pa

from ..errors import DeploymentError, HistoryError, ObjectChanged, ObjectNotFound, RegistrationRejected, StoreError
from ..model import INDEXED_SCHEMA, GatewayResult, HistoryRecord, HistoryStatus, ObjectRef, Outcome
from ..ports import Gateway, ImportHistory, ObjectStore, RegistrationProvider
from ..rules.ratelimit import RateLimiter, backoff_delay
from ..rules.reasons import reason_token
from .progress import Progress

STALE_CHANGED = "stale_inventory"  # the object's ETag is no longer the listed one
STALE_GONE = "object_not_found"  # the object is gone since the inventory
STALE_DETAIL = "the image was replaced since this inventory; the history keeps the current image's record"
TAG_NOT_WRITTEN = "Indexed tag not written"

HISTORY_STATUS_OF = {  # the history status each recorded outcome is written as
    Outcome.INDEXED: HistoryStatus.INDEXED,
    Outcome.FAILED_PERMANENT: HistoryStatus.FAILED_PERMANENT,
    Outcome.FAILED_TRANSIENT: HistoryStatus.FAILED_TRANSIENT,
}


@dataclass
class IndexingPolicy:
    owner: str  # who claims: the Dagster run id
    concurrency: int = 8
    max_attempts: int = 4  # gateway attempts per object before it is recorded as a transient failure
    backoff_base_seconds: float = 0.5
    backoff_cap_seconds: float = 20.0
    lease_seconds: float = 600.0  # longer than one object can take, retries included
    wait_for_expired_claims: bool = True  # claims left by a dead run are retried at the end of this one
    indexed_tag: tuple[str, str] = ("Indexed", "True")
    rng: random.Random = field(default_factory=random.Random)


@dataclass(frozen=True)
class IndexResult:
    ref: ObjectRef
    size: Optional[int]
    etag: Optional[str]
    outcome: Outcome
    reason: str
    attempts: int


class _Indexer:
    def __init__(self, store, provider, gateway, history, limiter, policy, log):
        self.store: ObjectStore = store
        self.provider: RegistrationProvider = provider
        self.gateway: Gateway = gateway
        self.history: ImportHistory = history
        self.limiter: RateLimiter = limiter
        self.policy: IndexingPolicy = policy
        self.log: Callable[[str], None] = log

    def index_one(self, row: dict) -> tuple[IndexResult, Optional[float]]:
        """Return the result, and for a claim held elsewhere the time its lease expires."""
        ref = ObjectRef(row["bucket"], row["key"], row["version_id"])

        def result(outcome: Outcome, reason: str, attempts: int = 0, etag: Optional[str] = row["e_tag"]) -> IndexResult:
            return IndexResult(ref, row["size"], etag, outcome, reason, attempts)

        # Is this row still the object's current version? Asked before any history write, so an
        # old inventory date (a backfill) never claims over the record of a newer image.
        try:
            current = self.store.head(ref.bucket, ref.key, ref.version_id)
        except ObjectNotFound:
            return result(Outcome.SKIPPED, f"{STALE_GONE}: the image is gone since the inventory"), None
        except StoreError as exc:
            return result(Outcome.FAILED_TRANSIENT, f"reading the image failed ({type(exc).__name__})"), None
        if row["e_tag"] and current.etag != row["e_tag"]:
            return result(Outcome.SKIPPED, f"{STALE_CHANGED}: {STALE_DETAIL}"), None
        etag = row["e_tag"] or current.etag

        if not self.history.claim(ref, etag, self.policy.owner, self.policy.lease_seconds):
            record = self.history.lookup([ref]).get(ref)
            if record and record.etag == etag and record.status == HistoryStatus.INDEXED:
                return result(Outcome.SKIPPED, "already indexed by another run", etag=etag), None
            if record and record.status == HistoryStatus.CLAIMED:
                return result(Outcome.SKIPPED, "claimed by another run", etag=etag), record.claim_expires_at
            state = record.status.value if record else "none"
            return result(Outcome.SKIPPED, f"not claimable (history: {state})", etag=etag), None

        try:
            final = self._register(ref, row, etag)
        except DeploymentError:
            # Not this object's fault: free it for the next run now, and stop this one.
            self.history.release(ref, self.policy.owner)
            raise
        except Exception as exc:  # a fault with this object alone must not stop the others
            self.log(f"{ref}: registration failed unexpectedly ({type(exc).__name__}); the next run retries it")
            final = result(Outcome.FAILED_TRANSIENT, f"unexpected error ({type(exc).__name__})", 0, etag)
        except BaseException:
            self.history.release(ref, self.policy.owner)  # interrupted: no outcome, free it now
            raise
        if final.outcome == Outcome.SKIPPED:  # the image changed under us: no outcome to record
            self.history.release(ref, self.policy.owner)
            return final, None
        try:
            final = self._record(ref, etag, row["user_id"], final)
        except HistoryError as exc:
            # e.g. our lease ran out and another run holds the claim now: it records the outcome.
            self.log(f"{ref}: outcome {final.outcome} not recorded: {exc}")
            return result(Outcome.SKIPPED, f"outcome not recorded: {exc}", final.attempts, etag), None
        return final, None

    def _register(self, ref: ObjectRef, row: dict, etag: str) -> IndexResult:
        def result(outcome: Outcome, reason: str, attempts: int = 0) -> IndexResult:
            return IndexResult(ref, row["size"], etag, outcome, reason, attempts)

        try:
            # IfMatch: the bytes sent are the bytes whose ETag is recorded (closes the HEAD-then-GET race).
            image = self.store.get_bytes(ref.bucket, ref.key, ref.version_id, if_match=etag)
        except ObjectChanged:
            return result(Outcome.SKIPPED, f"{STALE_CHANGED}: {STALE_DETAIL}")
        except ObjectNotFound:
            return result(Outcome.SKIPPED, f"{STALE_GONE}: the image is gone since the inventory")
        except StoreError as exc:
            return result(Outcome.FAILED_TRANSIENT, f"reading the image failed ({type(exc).__name__})")
        try:
            properties = self.provider.load_properties(row["properties_ref"]) if row["properties_ref"] else {}
        except RegistrationRejected as rejected:
            return result(Outcome.FAILED_PERMANENT, f"{reason_token(rejected.reason)}: {rejected.detail}")
        except ObjectNotFound:
            # Gone between qualification and now (being replaced?): as at qualification, the next run asks again.
            return result(Outcome.FAILED_TRANSIENT, "properties_not_found: the properties file is gone; the next run retries")
        except Exception as exc:
            return result(Outcome.FAILED_TRANSIENT, f"loading properties failed ({type(exc).__name__})")

        attempts = 0
        while True:
            attempts += 1
            answer: GatewayResult = self.gateway.register(row["user_id"], image, properties, pace=self.limiter.acquire)
            if answer.outcome != Outcome.FAILED_TRANSIENT or attempts >= self.policy.max_attempts:
                return result(answer.outcome, answer.reason, attempts)
            time.sleep(
                backoff_delay(attempts, self.policy.backoff_base_seconds, self.policy.backoff_cap_seconds, self.policy.rng)
            )

    def _record(self, ref: ObjectRef, etag: str, user_id: str, final: IndexResult) -> IndexResult:
        """Write the outcome to the history, then (after a success) the Indexed tag; return the
        result as the table records it, saying so when the tag could not be written."""
        self.history.record(
            HistoryRecord(
                ref=ref,
                etag=etag,
                status=HISTORY_STATUS_OF[final.outcome],
                user_id=user_id,
                reason=final.reason,
                attempts=final.attempts,
                owner=self.policy.owner,
                updated_at=time.time(),
            )
        )
        if final.outcome != Outcome.INDEXED:
            return final
        name, value = self.policy.indexed_tag
        try:
            self.store.merge_tags(ref.bucket, ref.key, {name: value}, ref.version_id)
        except StoreError as exc:
            # The history is the record of truth; the tag is a courtesy to people browsing the bucket.
            self.log(f"{ref}: indexed, but the {name} tag was not written: {type(exc).__name__}")
            return replace(final, reason=f"{final.reason}; {TAG_NOT_WRITTEN} ({type(exc).__name__})")
        return final


def index_qualified(
    qualified_batches: Iterable[pa.RecordBatch],
    *,
    store: ObjectStore,
    provider: RegistrationProvider,
    gateway: Gateway,
    history: ImportHistory,
    limiter: RateLimiter,
    policy: IndexingPolicy,
    log: Callable[[str], None] = lambda message: None,
    progress: Optional[Progress] = None,
    output_rows: int = 10_000,
) -> Iterator[pa.RecordBatch]:
    """Register the qualified rows; yield INDEXED_SCHEMA batches as outcomes are recorded.

    At most `2 * concurrency` objects are in flight, so memory stays flat however many qualify.
    """
    indexer = _Indexer(store, provider, gateway, history, limiter, policy, log)
    done: list[IndexResult] = []
    held_elsewhere: list[tuple[dict, float]] = []
    may_wait = [policy.wait_for_expired_claims]  # only the first pass waits for other runs' claims

    def collect(future: Future, row: dict) -> None:
        result, claim_expires_at = future.result()
        if claim_expires_at is not None and may_wait[0]:
            held_elsewhere.append((row, claim_expires_at))
        else:
            done.append(result)
            if progress:
                progress.advance()

    def run(rows: Iterable[dict]) -> Iterator[pa.RecordBatch]:
        in_flight: dict[Future, dict] = {}
        with ThreadPoolExecutor(max_workers=policy.concurrency, thread_name_prefix="index") as pool:
            for row in rows:
                in_flight[pool.submit(indexer.index_one, row)] = row
                if len(in_flight) >= 2 * policy.concurrency:
                    finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        collect(future, in_flight.pop(future))
                if len(done) >= output_rows:
                    yield _results_batch(done)
                    done.clear()
            for future in list(in_flight):
                collect(future, in_flight.pop(future))
        if done:
            yield _results_batch(done)
            done.clear()

    yield from run(_qualified_rows(qualified_batches))

    if held_elsewhere:
        # A run that died mid-indexing leaves claims behind. Wait for their leases, then try again:
        # a claim still held after that belongs to a live run, which records the outcome itself.
        retry_rows = [row for row, _ in held_elsewhere]
        wait_until = max(expires for _, expires in held_elsewhere)
        held_elsewhere.clear()
        delay = min(wait_until - time.time(), policy.lease_seconds)
        if delay > 0:
            log(f"{len(retry_rows)} objects are claimed by another run; waiting {delay:.0f}s for the claims to expire")
            time.sleep(delay)
        may_wait[0] = False
        yield from run(retry_rows)


def _qualified_rows(batches: Iterable[pa.RecordBatch]) -> Iterator[dict]:
    for batch in batches:
        for row in batch.filter(batch.column("qualified")).to_pylist():
            yield row


def _results_batch(results: list[IndexResult]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "bucket": [r.ref.bucket for r in results],
            "key": [r.ref.key for r in results],
            "version_id": [r.ref.version_id for r in results],
            "size": [r.size for r in results],
            "e_tag": [r.etag for r in results],
            "outcome": [r.outcome.value for r in results],
            "reason": [r.reason for r in results],
            "attempts": [r.attempts for r in results],
        },
        schema=INDEXED_SCHEMA,
    )
