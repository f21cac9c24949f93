"""Backfills, overlapping runs and bad input are safe (issue 7): the history only moves forward,
one object never fails the rest, and a deployment fault stops the run without blaming users."""

import random

import pyarrow as pa
import pytest

from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.core.errors import DeploymentError, RegistrationRejected
from rivbulk_pipeline.core.model import CANDIDATE_SCHEMA, QUALIFIED_SCHEMA, HistoryStatus, ObjectRef, RegistrationInfo
from rivbulk_pipeline.core.rules.ratelimit import RateLimiter
from rivbulk_pipeline.core.steps.indexing import IndexingPolicy, index_qualified
from rivbulk_pipeline.core.steps.qualify import qualify_candidates
from rivbulk_pipeline.resources.gateway import RivHttpGateway
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.resources.registration import S3TagRegistrationProvider
from rivbulk_pipeline_tests.support.gateway_server import Answer, FakeRivGateway

BUCKET = "faces"


@pytest.fixture
def parts(tmp_path, history):
    """A folder store, the import history (SQLite, then DynamoDB on moto) and a loopback gateway."""
    store = LocalObjectStore(root=str(tmp_path / "store"))
    store.create_bucket(BUCKET)
    provider = S3TagRegistrationProvider(store=store, allowed_property_buckets=[BUCKET])
    with FakeRivGateway() as riv:
        yield store, history, provider, riv


def _put(store, user: str, seed: int, properties: bytes | None = None, full_tags: bool = False) -> tuple[str, str]:
    key = f"people/{user}.png"
    etag = store.put_bytes(BUCKET, key, face_image(seed))
    tags = {"UserId": user}
    if full_tags:  # S3's 10 tags: no room for Indexed=True, so only the history can stop a second registration
        tags.update({f"Label{n}": "x" for n in range(9)})
    if properties is not None:
        store.put_bytes(BUCKET, f"props/{user}.json", properties)
        tags["Properties"] = f"s3://{BUCKET}/props/{user}.json"
    store.put_tags(BUCKET, key, tags)
    return key, etag


def _candidates(rows: list[tuple[str, str | None]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [dict(bucket=BUCKET, key=key, version_id=None, size=1, e_tag=etag) for key, etag in rows],
        schema=CANDIDATE_SCHEMA,
    )


def _qualify(parts, rows, provider=None) -> dict[str, dict]:
    store, history, default_provider, _ = parts
    batches = qualify_candidates(
        [_candidates(rows)], store=store, provider=provider or default_provider, history=history
    )
    return {r["key"]: r for b in batches for r in b.to_pylist()}


def _index(parts, qualified: list[dict], owner: str, gateway=None) -> dict[str, dict]:
    store, history, provider, riv = parts
    batch = pa.RecordBatch.from_pylist(qualified, schema=QUALIFIED_SCHEMA)
    results = index_qualified(
        [batch],
        store=store,
        provider=provider,
        gateway=gateway or RivHttpGateway(url=riv.url, timeout_seconds=2),
        history=history,
        limiter=RateLimiter(200),
        policy=IndexingPolicy(
            owner=owner, concurrency=4, max_attempts=2, backoff_base_seconds=0.01, rng=random.Random(1)
        ),
    )
    return {r["key"]: r for b in results for r in b.to_pylist()}


def _load(parts, rows, owner: str) -> dict[str, dict]:
    decided = _qualify(parts, rows)
    return _index(parts, [r for r in decided.values() if r["qualified"]], owner)


# ---- 2. the history only moves forward ----


def test_backfilling_an_older_date_after_a_newer_one_keeps_the_newer_record(parts):
    store, history, _, riv = parts
    key, old_etag = _put(store, "ann", 1, full_tags=True)
    old_date = [(key, old_etag)]  # what the older inventory listed
    key, new_etag = _put(store, "ann", 2, full_tags=True)  # the image was replaced before the newer inventory
    newer = _load(parts, [(key, new_etag)], owner="run-newer")
    assert newer[key]["outcome"] == "indexed" and "Indexed tag not written" in newer[key]["reason"]

    older = _load(parts, old_date, owner="run-backfill")
    assert older[key]["outcome"] == "skipped" and older[key]["reason"].startswith("stale_inventory:")
    record = history.lookup([ObjectRef(BUCKET, key)])[ObjectRef(BUCKET, key)]
    assert (record.status, record.etag, record.owner) == (HistoryStatus.INDEXED, new_etag, "run-newer")
    assert riv.registrations == {"ann": 1}


def test_a_final_record_for_the_current_etag_refuses_any_claim(parts):
    store, history, _, _ = parts
    key, etag = _put(store, "ann", 1)
    ref = ObjectRef(BUCKET, key)
    assert history.claim(ref, etag, "run-1", 60)
    history.record(
        history.lookup([ref])[ref].__class__(ref=ref, etag=etag, status=HistoryStatus.INDEXED, owner="run-1")
    )
    assert not history.claim(ref, etag, "run-2", 60)
    # a live claim is its run's whatever ETag another run brings
    key2, etag2 = _put(store, "ben", 2)
    ref2 = ObjectRef(BUCKET, key2)
    assert history.claim(ref2, etag2, "run-1", 60)
    assert not history.claim(ref2, "another-etag", "run-2", 60)


def test_the_bytes_sent_are_the_bytes_whose_etag_is_recorded(parts):
    """The image is replaced between the HEAD and the GET: the conditional GET refuses it."""
    store, history, provider, riv = parts
    key, etag = _put(store, "ann", 1)
    decided = _qualify(parts, [(key, etag)])
    original_head = store.__class__.head

    def head_then_replace(self, bucket, k, version_id=None):
        info = original_head(self, bucket, k, version_id)
        object.__getattribute__(self, "put_bytes")(bucket, k, face_image(77))  # replaced right after the HEAD
        return info

    try:
        store.__class__.head = head_then_replace
        out = _index(parts, list(decided.values()), owner="run-1")
    finally:
        store.__class__.head = original_head
    assert out[key]["outcome"] == "skipped" and out[key]["reason"].startswith("stale_inventory:")
    assert riv.requests == []
    record = history.lookup([ObjectRef(BUCKET, key)]).get(ObjectRef(BUCKET, key))
    assert record is None or record.status == HistoryStatus.CLAIMED and record.claim_expires_at == 0  # freed


# ---- 3. one object never fails the partition ----


def test_a_lone_surrogate_in_properties_fails_that_object_alone(parts):
    store, history, _, riv = parts
    bad_key, bad_etag = _put(store, "ann", 1, properties=b'{"name": "Ren\\ud83d"}')
    good_key, good_etag = _put(store, "ben", 2, properties=b'{"name": "Ben\\ud83d\\ude00"}')
    decided = _qualify(parts, [(bad_key, bad_etag), (good_key, good_etag)])
    assert decided[bad_key]["reason"] == "bad_properties" and "not valid Unicode text" in decided[bad_key]["detail"]
    assert decided[good_key]["qualified"]
    out = _index(parts, [decided[good_key]], owner="run-1")
    assert out[good_key]["outcome"] == "indexed"


def test_the_gateways_refuse_lone_surrogates_as_that_objects_failure(parts):
    store, _, _, riv = parts
    gateway = RivHttpGateway(url=riv.url, timeout_seconds=2)
    result = gateway.register("ann", face_image(1), {"name": "Ren\ud83d"})
    assert result.outcome == "failed_permanent" and result.reason.startswith("bad_properties")
    assert riv.requests == []


class RosterProvider:
    """A user's own provider with its own reasons."""

    def registration_for(self, obj, tags):
        if obj.key.endswith("ann.png"):
            raise RegistrationRejected("not_in_roster", f"{obj}: not in the HR roster")
        if obj.key.endswith("ben.png"):
            raise RegistrationRejected("Not In Roster: ben@example.com", f"{obj}: rejected")
        return RegistrationInfo(user_id="cat")

    def load_properties(self, ref):
        return {}


def test_a_providers_own_reason_is_recorded_and_a_bad_one_becomes_provider_error(parts):
    store, *_ = parts
    rows = [_put(store, user, n) for n, user in enumerate(["ann", "ben", "cat"])]
    decided = _qualify(parts, rows, provider=RosterProvider())
    by_user = {key.split("/")[1][:-4]: row for key, row in decided.items()}
    assert by_user["ann"]["reason"] == "not_in_roster"
    assert by_user["ben"]["reason"] == "provider_error" and "ben@example.com" not in by_user["ben"]["detail"]
    assert by_user["cat"]["qualified"]


class ExplodingGateway:
    """A gateway that raises for one user (a bug in handling that user's data)."""

    def __init__(self, real):
        self.real = real

    needs_image_bytes = True

    def register(self, user_id, image, properties, pace=lambda: None, *, source=None):
        if user_id == "ann":
            raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")
        return self.real.register(user_id, image, properties, pace, source=source)

    def user_exists(self, user_id):
        return self.real.user_exists(user_id)


def test_an_unexpected_error_for_one_object_is_its_outcome_and_the_rest_complete(parts):
    store, history, _, riv = parts
    rows = [_put(store, user, n) for n, user in enumerate(["ann", "ben", "cat"])]
    decided = _qualify(parts, rows)
    out = _index(parts, list(decided.values()), "run-1", gateway=ExplodingGateway(RivHttpGateway(url=riv.url)))
    by_user = {key.split("/")[1][:-4]: row for key, row in out.items()}
    assert by_user["ann"]["outcome"] == "failed_transient" and "UnicodeEncodeError" in by_user["ann"]["reason"]
    assert {by_user["ben"]["outcome"], by_user["cat"]["outcome"]} == {"indexed"}
    record = history.lookup([ObjectRef(BUCKET, rows[0][0])])[ObjectRef(BUCKET, rows[0][0])]
    assert record.status == HistoryStatus.FAILED_TRANSIENT  # the next run retries it


# ---- 4. deployment faults stop the run and blame nobody ----


@pytest.mark.parametrize(
    "answer, says",
    [
        (Answer.http(404, {"message": "Not Found"}), "HTTP 404"),
        (Answer.http(405), "HTTP 405"),
        (Answer.http(401), "HTTP 401"),
        (Answer.http(403, {"message": "Forbidden"}), "HTTP 403"),
        (Answer.raw(301, b""), "HTTP 301"),
    ],
)
def test_a_deployment_answer_stops_the_run_names_the_url_and_a_rerun_registers_everyone(parts, answer, says):
    store, history, _, riv = parts
    rows = [_put(store, user, n) for n, user in enumerate(["ann", "ben", "cat", "dan"])]
    decided = list(_qualify(parts, rows).values())
    for user in ("ann", "ben", "cat", "dan"):
        riv.answer_for(user, answer)
    with pytest.raises(DeploymentError) as raised:
        _index(parts, decided, owner="run-1")
    assert says in str(raised.value) and f"{riv.url}/register" in str(raised.value)
    assert len(riv.requests) <= 8  # stopped at once: no retries, not the whole bucket
    for key, _ in rows:  # nothing recorded against the users; every claim freed
        record = history.lookup([ObjectRef(BUCKET, key)]).get(ObjectRef(BUCKET, key))
        assert record is None or (record.status == HistoryStatus.CLAIMED and record.claim_expires_at == 0)

    for user in ("ann", "ben", "cat", "dan"):
        riv.answer_for(user, Answer.succeeded())
    again = _index(parts, list(_qualify(parts, rows).values()), owner="run-2")
    assert {r["outcome"] for r in again.values()} == {"indexed"}


def test_a_400_is_about_the_request_and_permanent(parts):
    store, _, _, riv = parts
    rows = [_put(store, "ann", 1)]
    riv.answer_for("ann", Answer.http(400, {"message": "InvalidImageFormatException"}))
    out = _index(parts, list(_qualify(parts, rows).values()), owner="run-1")
    row = out[rows[0][0]]
    assert row["outcome"] == "failed_permanent" and row["reason"].startswith("http_400")


# ---- 5. reports without the optional ETag ----


def test_a_report_without_etags_loads_with_the_objects_own_etag(parts):
    store, history, _, riv = parts
    key, etag = _put(store, "ann", 1)
    first = _qualify(parts, [(key, None)])
    assert first[key]["qualified"] and first[key]["e_tag"] == etag
    out = _index(parts, [first[key]], owner="run-1")
    assert out[key]["outcome"] == "indexed" and out[key]["e_tag"] == etag
    assert history.lookup([ObjectRef(BUCKET, key)])[ObjectRef(BUCKET, key)].etag == etag

    assert _qualify(parts, [(key, None)])[key]["reason"] == "already_indexed"
    _, new_etag = _put(store, "ann", 2)  # replaced: the next ETag-less report must qualify it again
    again = _qualify(parts, [(key, None)])
    assert again[key]["qualified"] and again[key]["e_tag"] == new_etag


def test_an_etagless_row_for_a_gone_object_is_object_not_found(parts):
    decided = _qualify(parts, [("people/nobody.png", None)])
    assert decided["people/nobody.png"]["reason"] == "object_not_found"


def test_tag_reads_in_chunks_keep_every_row_with_its_own_decision(parts, monkeypatch):
    store, history, _, _ = parts
    monkeypatch.setattr("rivbulk_pipeline.core.steps.qualify._READS_QUEUED", 3)  # 11 rows: chunks of 3, 3, 3, 2
    rows = []
    for n in range(8):
        key, etag = _put(store, f"user{n}", n + 1)
        rows.append((key, etag if n % 3 else None))  # every third row's ETag comes from a HEAD
    rows[4:4] = [(f"people/gone{n}.png", None) for n in range(3)]  # HEAD fails: decided without a tag read
    decided = _qualify(parts, rows)
    assert len(decided) == 11
    for key, _ in rows:
        if "gone" in key:
            assert decided[key]["reason"] == "object_not_found" and not decided[key]["qualified"]
        else:
            assert decided[key]["qualified"] and decided[key]["user_id"] == key.split("/")[1].removesuffix(".png")
