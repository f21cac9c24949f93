"""Indexing: register each qualified object through the gateway, exactly once.

For each object: claim it in the import history (a conditional write, so two runs never
both register it), read the image, load the properties, call the gateway at the configured
rate with retries for transient failures, record the outcome, and only after a success merge
`Indexed=True` into the object's tags. A run killed anywhere leaves either no claim, an
expired-able claim (retried by the next run), or a final outcome.

Never register blindly after an unknown outcome: a call that may have registered the user (a
504, a read timeout, a dropped connection), or a claim left by a run that died, is settled first
by asking the registry whether the user exists, once the workflow must have ended. The claim
is renewed right before each call goes out, so it cannot expire while the call is in flight.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Optional

import pyarrow as pa

from ..errors import (
    DeploymentError,
    HistoryError,
    ObjectChanged,
    ObjectNotFound,
    ObjectTooLarge,
    RegistrationRejected,
    StoreError,
)
from ..model import INDEXED_SCHEMA, GatewayResult, HistoryRecord, HistoryStatus, ObjectRef, Outcome, Reason
from ..ports import Gateway, ImportHistory, ObjectStore, RegistrationProvider
from ..rules.images import MAX_IMAGE_BYTES, TOO_LARGE
from ..rules.ratelimit import InFlightGate, RateLimiter, backoff_delay
from ..rules.reasons import reason_token
from ..rules.riv_protocol import TOO_LARGE_FOR_RIV
from .call_meter import CallMeter
from .progress import Progress

STALE_CHANGED = "stale_inventory"  # the object's ETag is no longer the listed one
STALE_GONE = "object_not_found"  # the object is gone since the inventory
STALE_DETAIL = "the image was replaced since this inventory; the history keeps the current image's record"
TAG_NOT_WRITTEN = "Indexed tag not written"
OUTCOME_UNKNOWN = "outcome_unknown"  # the last call may have registered the user: the next run settles first
SETTLED = "SUCCEEDED (settled: the registry holds this user after a call whose outcome was unknown)"
TRANSIENT = Reason.TRANSIENT_ERROR.value
# Every reason recorded here starts with a token (`<code>: <detail>`): the UI shows only the code.


class _ClaimGone(Exception):
    """Our claim could not be renewed before a call: another run holds the object now."""


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
    lease_seconds: float = 600.0  # renewed before each call: longer than one call and its settling
    settle_after_seconds: float = 30.0  # how long a registration may go on after its call gave up (RIV: 30 s)
    largest_image_bytes: Optional[int] = None  # images over this are refused without reading them
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
    def __init__(self, store, provider, gateway, history, limiter, policy, log, gate, meter):
        self.store: ObjectStore = store
        self.provider: RegistrationProvider = provider
        self.gateway: Gateway = gateway
        self.history: ImportHistory = history
        self.limiter: RateLimiter = limiter
        self.policy: IndexingPolicy = policy
        self.log: Callable[[str], None] = log
        self.gate: InFlightGate = gate
        self.meter: CallMeter = meter

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
            return result(
                Outcome.FAILED_TRANSIENT, f"{TRANSIENT}: reading the image failed ({type(exc).__name__})"
            ), None
        if row["e_tag"] and current.etag != row["e_tag"]:
            return result(Outcome.SKIPPED, f"{STALE_CHANGED}: {STALE_DETAIL}"), None
        etag = row["e_tag"] or current.etag

        before = self.history.lookup([ref]).get(ref)
        claimed_at = time.monotonic()
        if not self.history.claim(ref, etag, self.policy.owner, self.policy.lease_seconds):
            record = self.history.lookup([ref]).get(ref)
            if record and record.etag == etag and record.status == HistoryStatus.INDEXED:
                return result(Outcome.SKIPPED, "already_indexed: by another run", etag=etag), None
            if record and record.status == HistoryStatus.CLAIMED:
                return result(
                    Outcome.SKIPPED, "claimed_elsewhere: claimed by another run", etag=etag
                ), record.claim_expires_at
            state = record.status.value if record else "none"
            return result(Outcome.SKIPPED, f"not_claimable: the history says {state}", etag=etag), None
        # A claim taken over from a run that died, or a last call whose outcome was unknown: that
        # call may have registered the user, so the registry is asked before calling again.
        settle_first = (
            before is not None
            and before.etag == etag
            and (
                before.status == HistoryStatus.CLAIMED
                or (before.status == HistoryStatus.FAILED_TRANSIENT and before.reason.startswith(OUTCOME_UNKNOWN))
            )
        )

        try:
            with self.gate:
                final = self._register(ref, row, etag, settle_first, claimed_at)
        except DeploymentError:
            # Not this object's fault: free it for the next run now, and stop this one.
            self.history.release(ref, self.policy.owner)
            raise
        except _ClaimGone:
            return result(
                Outcome.SKIPPED,
                "claimed_elsewhere: this run's claim lapsed before its call; another run holds it",
                etag=etag,
            ), None
        except Exception as exc:  # a fault with this object alone must not stop the others
            self.log(f"{ref}: registration failed unexpectedly ({type(exc).__name__}); the next run retries it")
            final = result(Outcome.FAILED_TRANSIENT, f"unexpected_error: {type(exc).__name__}", 0, etag)
        except BaseException:
            self.history.release(ref, self.policy.owner)  # interrupted: no outcome, free it now
            raise
        if final.outcome == Outcome.SKIPPED:  # the image changed under us: no outcome to record
            self.history.release(ref, self.policy.owner)
            return final, None
        try:
            final = self._record(ref, etag, row["user_id"], final)
        except HistoryError as exc:
            # e.g. our lease ran out and another run holds the claim now: it settles and records.
            self.log(f"{ref}: outcome {final.outcome} not recorded: {exc}")
            return result(Outcome.SKIPPED, f"history_error: outcome not recorded: {exc}", final.attempts, etag), None
        return final, None

    def _register(self, ref: ObjectRef, row: dict, etag: str, settle_first: bool, claimed_at: float) -> IndexResult:
        def result(outcome: Outcome, reason: str, attempts: int = 0) -> IndexResult:
            return IndexResult(ref, row["size"], etag, outcome, reason, attempts)

        image: Optional[bytes] = None
        if self.gateway.needs_image_bytes:
            largest = self.policy.largest_image_bytes
            if largest is not None and row["size"] is not None and row["size"] > largest:
                return result(
                    Outcome.FAILED_PERMANENT,
                    f"{TOO_LARGE_FOR_RIV}: the image is {row['size']:,} bytes; inline, RIV takes images up to about"
                    f" {largest:,} bytes (Step Functions' 256 KiB state): use RIVBULK_GATEWAY_IMAGE_MODE=by_reference",
                )
            try:
                # IfMatch: the bytes sent are the bytes whose ETag is recorded (closes the HEAD-then-GET race).
                # max_bytes: an image over what the registry takes is refused from its size, never read whole.
                image = self.store.get_bytes(
                    ref.bucket, ref.key, ref.version_id, if_match=etag, max_bytes=largest or MAX_IMAGE_BYTES
                )
            except ObjectTooLarge as exc:
                code = TOO_LARGE_FOR_RIV if largest else TOO_LARGE
                return result(Outcome.FAILED_PERMANENT, f"{code}: {exc}")
            except ObjectChanged:
                return result(Outcome.SKIPPED, f"{STALE_CHANGED}: {STALE_DETAIL}")
            except ObjectNotFound:
                return result(Outcome.SKIPPED, f"{STALE_GONE}: the image is gone since the inventory")
            except StoreError as exc:
                return result(Outcome.FAILED_TRANSIENT, f"{TRANSIENT}: reading the image failed ({type(exc).__name__})")
        try:
            properties = self.provider.load_properties(row["properties_ref"]) if row["properties_ref"] else {}
        except RegistrationRejected as rejected:
            return result(Outcome.FAILED_PERMANENT, f"{reason_token(rejected.reason)}: {rejected.detail}")
        except ObjectNotFound:
            # Gone between qualification and now (being replaced?): as at qualification, the next run asks again.
            return result(
                Outcome.FAILED_TRANSIENT, "properties_not_found: the properties file is gone; the next run retries"
            )
        except Exception as exc:
            return result(
                Outcome.FAILED_TRANSIENT, f"{Reason.PROVIDER_ERROR}: loading properties failed ({type(exc).__name__})"
            )

        user_id = row["user_id"]
        lease_from = [claimed_at]  # when the claim was taken or last renewed (monotonic)
        attempts = 0
        unknown_since: Optional[float] = time.time() - self.policy.settle_after_seconds if settle_first else None
        while True:
            if unknown_since is not None:
                # Ask once the registration the earlier call may have started must have ended.
                time.sleep(max(0.0, unknown_since + self.policy.settle_after_seconds - time.time()))
                exists = self.gateway.user_exists(user_id)
                if exists:
                    return result(Outcome.INDEXED, SETTLED, attempts)
                # False: it did not register, call again. None (no check-userid on this RIV): call
                # again too; at worst RIV stores a second face of this user (docs/gateway.md).
            attempts += 1
            sent_at: list[float] = []

            def pace(sent_at: list[float] = sent_at) -> None:
                # Renewed as the call is about to leave once half the lease has gone (the lease is
                # over twice a call's worst case), so the claim outlives the call, and a lapsed one
                # stops it. Before the token, so nothing slow sits between the token and the send.
                if time.monotonic() - lease_from[0] > self.policy.lease_seconds / 2:
                    if not self.history.renew(ref, self.policy.owner, self.policy.lease_seconds):
                        raise _ClaimGone()
                    lease_from[0] = time.monotonic()
                self.limiter.acquire()
                sent_at.append(self.meter.started())

            answer: GatewayResult = self.gateway.register(user_id, image, properties, pace, source=ref)
            if sent_at:
                self.gate.observe(self.meter.ended(sent_at[0]))
            if answer.outcome != Outcome.FAILED_TRANSIENT:
                return result(answer.outcome, answer.reason, attempts)
            unknown_since = time.time() if answer.unknown else None
            if attempts >= self.policy.max_attempts:
                reason = f"{OUTCOME_UNKNOWN}: {answer.reason}" if answer.unknown else answer.reason
                return result(Outcome.FAILED_TRANSIENT, reason, attempts)
            time.sleep(
                backoff_delay(
                    attempts, self.policy.backoff_base_seconds, self.policy.backoff_cap_seconds, self.policy.rng
                )
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
    meter: Optional[CallMeter] = None,
) -> Iterator[pa.RecordBatch]:
    """Register the qualified rows; yield INDEXED_SCHEMA batches as outcomes are recorded.

    `policy.concurrency` workers; of them, as many hold an image and a call as the rate needs at
    the gateway's measured latency (InFlightGate), so memory stays flat however many qualify.
    """
    gate = InFlightGate(limiter.rate, policy.concurrency)
    meter = meter if meter is not None else CallMeter(limiter.rate, policy.concurrency)
    indexer = _Indexer(store, provider, gateway, history, limiter, policy, log, gate, meter)
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
