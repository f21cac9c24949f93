"""The indexing step over real parts: a folder store, SQLite history, the RIV client against a
loopback gateway that answers as scripted."""

import random

import pyarrow as pa
import pytest

from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.core.errors import DeploymentError
from rivbulk_pipeline.core.model import QUALIFIED_SCHEMA, HistoryStatus, ObjectRef
from rivbulk_pipeline.core.rules.ratelimit import RateLimiter
from rivbulk_pipeline.core.steps.indexing import IndexingPolicy, index_qualified
from rivbulk_pipeline.resources.gateway import RivHttpGateway
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.resources.registration import S3TagRegistrationProvider
from rivbulk_pipeline_tests.support.gateway_server import Answer, FakeRivGateway

BUCKET = "faces"


@pytest.fixture
def parts(tmp_path):
    store = LocalObjectStore(root=str(tmp_path / "store"))
    store.create_bucket(BUCKET)
    history = SqliteImportHistory(db_path=str(tmp_path / "history.sqlite"))
    provider = S3TagRegistrationProvider(store=store, allowed_property_buckets=[BUCKET])
    with FakeRivGateway() as riv:
        yield store, history, provider, riv


def _qualified(store, users: list[str], properties: dict | None = None) -> pa.RecordBatch:
    rows = []
    for n, user in enumerate(users):
        key = f"people/{user}.png"
        etag = store.put_bytes(BUCKET, key, face_image(500 + n))
        store.put_tags(BUCKET, key, {"UserId": user, "Team": "blue"})
        rows.append(
            dict(
                bucket=BUCKET,
                key=key,
                version_id=None,
                size=1,
                e_tag=etag,
                qualified=True,
                reason="qualified",
                detail="",
                user_id=user,
                properties_ref=(properties or {}).get(user),
            )
        )
    return pa.RecordBatch.from_pylist(rows, schema=QUALIFIED_SCHEMA)


def _run(parts, batch, owner="run-1", rate=100.0, max_attempts=3):
    store, history, provider, riv = parts
    results = index_qualified(
        [batch],
        store=store,
        provider=provider,
        gateway=RivHttpGateway(url=riv.url, timeout_seconds=2),
        history=history,
        limiter=RateLimiter(rate),
        policy=IndexingPolicy(
            owner=owner, concurrency=4, max_attempts=max_attempts, backoff_base_seconds=0.01, rng=random.Random(1)
        ),
    )
    return {r["key"].split("/")[1][:-4]: r for b in results for r in b.to_pylist()}


def test_success_records_history_then_merges_the_indexed_tag(parts):
    store, history, _, riv = parts
    out = _run(parts, _qualified(store, ["ann", "ben"]))
    assert {u: r["outcome"] for u, r in out.items()} == {"ann": "indexed", "ben": "indexed"}
    record = history.lookup([ObjectRef(BUCKET, "people/ann.png")])[ObjectRef(BUCKET, "people/ann.png")]
    assert record.status == HistoryStatus.INDEXED and record.user_id == "ann"
    assert store.get_tags(BUCKET, "people/ann.png") == {"UserId": "ann", "Team": "blue", "Indexed": "True"}
    assert riv.registrations == {"ann": 1, "ben": 1}


def test_transient_failures_are_retried_then_succeed(parts):
    store, history, _, riv = parts
    riv.script(Answer.http(429), Answer.http(503))
    out = _run(parts, _qualified(store, ["ann"]))
    assert out["ann"]["outcome"] == "indexed" and out["ann"]["attempts"] == 3
    assert riv.calls_for("ann") == 3


def test_permanent_failures_are_not_retried_and_keep_their_reason(parts):
    store, history, _, riv = parts
    riv.answer_for("ann", Answer.failed("SunglassesDetectedException", "Sunglasses detected"))
    riv.answer_for("ben", Answer.user_already_exists())
    out = _run(parts, _qualified(store, ["ann", "ben"]))
    assert out["ann"]["outcome"] == "failed_permanent" and "Sunglasses" in out["ann"]["reason"]
    assert out["ben"]["outcome"] == "failed_permanent" and "UserAlreadyExists" in out["ben"]["reason"]
    assert riv.calls_for("ann") == 1 and riv.calls_for("ben") == 1
    assert "Indexed" not in store.get_tags(BUCKET, "people/ann.png")  # the reference tagged it anyway


def test_exhausted_retries_are_transient_and_the_next_run_retries_them(parts):
    store, history, _, riv = parts
    riv.answer_for("ann", Answer.http(500))
    batch = _qualified(store, ["ann"])
    first = _run(parts, batch, owner="run-1", max_attempts=2)
    assert first["ann"]["outcome"] == "failed_transient" and first["ann"]["attempts"] == 2
    assert (
        history.lookup([ObjectRef(BUCKET, "people/ann.png")])[ObjectRef(BUCKET, "people/ann.png")].status
        == HistoryStatus.FAILED_TRANSIENT
    )

    riv.answer_for("ann", Answer.succeeded())
    second = _run(parts, batch, owner="run-2")
    assert second["ann"]["outcome"] == "indexed"


def test_a_rerun_skips_what_is_indexed_without_calling(parts):
    store, history, _, riv = parts
    batch = _qualified(store, ["ann", "ben"])
    _run(parts, batch, owner="run-1")
    again = _run(parts, batch, owner="run-2")
    assert {r["outcome"] for r in again.values()} == {"skipped"}
    assert len(riv.requests) == 2


def test_an_image_changed_since_the_inventory_is_not_registered(parts):
    store, history, _, riv = parts
    batch = _qualified(store, ["ann"])
    store.put_bytes(BUCKET, "people/ann.png", face_image(999))
    out = _run(parts, batch)
    assert out["ann"]["outcome"] == "skipped" and out["ann"]["reason"].startswith("stale_inventory:")
    assert riv.requests == []
    assert history.lookup([ObjectRef(BUCKET, "people/ann.png")]) == {}  # a stale row leaves no trace in the history


def test_missing_image_and_bad_properties_fail_alone(parts):
    store, history, _, riv = parts
    store.put_bytes(BUCKET, "props/ben.json", b'{"age": 40}')
    batch = _qualified(store, ["ann", "ben", "cat"], properties={"ben": f"s3://{BUCKET}/props/ben.json"})
    store.delete(BUCKET, "people/ann.png")
    out = _run(parts, batch)
    assert out["ann"]["outcome"] == "skipped" and out["ann"]["reason"].startswith("object_not_found:")
    assert out["ben"]["outcome"] == "failed_permanent" and "bad_properties" in out["ben"]["reason"]
    assert out["cat"]["outcome"] == "indexed"
    assert riv.registrations == {"cat": 1}


class BrokenGateway:
    """A gateway whose deployment is wrong: it raises instead of answering."""

    needs_image_bytes = True

    def register(self, user_id, image, properties, pace=lambda: None, *, source=None):
        raise DeploymentError("RIVBULK_GATEWAY_AUTH=sigv4 needs a region")

    def user_exists(self, user_id):
        return None


def test_a_deployment_error_stops_the_run_and_frees_the_claim(parts):
    store, history, provider, _ = parts
    batch = _qualified(store, ["ann"])
    with pytest.raises(DeploymentError, match="needs a region"):
        list(
            index_qualified(
                [batch],
                store=store,
                provider=provider,
                gateway=BrokenGateway(),
                history=history,
                limiter=RateLimiter(100),
                policy=IndexingPolicy(owner="run-1", concurrency=1),
            )
        )
    assert history.claim(ObjectRef(BUCKET, "people/ann.png"), batch.column("e_tag")[0].as_py(), "run-2", 60)
