"""The load against RIV as its code really behaves (the stand-in in riv_standin.py), item by item of
issue 16: request shape, error names, user ids, unknown outcomes, the rate at RIV's speed, bodies RIV
cannot take, and the embedded registry answering as RIV does."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pytest
import requests

from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.core.errors import DeploymentError
from rivbulk_pipeline.core.model import QUALIFIED_SCHEMA, HistoryStatus, ObjectRef, Outcome
from rivbulk_pipeline.core.rules.ratelimit import RateLimiter, max_calls_in_any_window
from rivbulk_pipeline.core.rules.riv_protocol import largest_inline_image
from rivbulk_pipeline.core.steps.call_meter import CallMeter
from rivbulk_pipeline.core.steps.indexing import OUTCOME_UNKNOWN, SETTLED, IndexingPolicy, index_qualified
from rivbulk_pipeline.core.steps.qualify import decide_one
from rivbulk_pipeline.resources.gateway import LocalRegistryGateway, RivHttpGateway
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.resources.registration import S3TagRegistrationProvider
from rivbulk_pipeline_tests.support.riv_standin import RivStandIn, make_png

BUCKET = "faces"


class World:
    """A local store and history, and the load's parts pointed at a RIV stand-in."""

    def __init__(self, tmp: Path, riv: RivStandIn) -> None:
        self.riv = riv
        self.store = LocalObjectStore(root=str(tmp / "store"))
        self.store.create_bucket(BUCKET)
        self.history = SqliteImportHistory(db_path=str(tmp / "history.sqlite"))
        self.provider = S3TagRegistrationProvider(store=self.store, allowed_property_buckets=[BUCKET])
        self.gateway = RivHttpGateway(url=riv.url, timeout_seconds=5)
        self._seed = 700

    def put(self, user: str, image: Optional[bytes] = None, properties: Optional[dict] = None) -> dict:
        """One qualified row for a new object of `user` (tags and properties in the store)."""
        self._seed += 1
        key = f"people/{user}-{self._seed}.png"
        etag = self.store.put_bytes(BUCKET, key, image if image is not None else face_image(self._seed))
        tags = {"UserId": user}
        if properties is not None:
            self.store.put_bytes(BUCKET, f"properties/{user}.json", __import__("json").dumps(properties).encode())
            tags["Properties"] = f"s3://{BUCKET}/properties/{user}.json"
        self.store.put_tags(BUCKET, key, tags)
        decision = decide_one(ObjectRef(BUCKET, key), self.store, self.provider)
        size = self.store.head(BUCKET, key).size
        return dict(
            bucket=BUCKET,
            key=key,
            version_id=None,
            size=size,
            e_tag=etag,
            qualified=decision.qualified,
            reason=str(decision.reason),
            detail=decision.detail,
            user_id=decision.user_id,
            properties_ref=decision.properties_ref,
        )

    def index(
        self, rows: list[dict], rate: float = 50.0, meter: Optional[CallMeter] = None, **policy
    ) -> dict[str, dict]:
        policy = {
            "owner": "run-1",
            "concurrency": 64,
            "max_attempts": 4,
            "backoff_base_seconds": 0.01,
            "settle_after_seconds": 0.0,
            "rng": random.Random(7),
            **policy,
        }
        batch = pa.RecordBatch.from_pylist(rows, schema=QUALIFIED_SCHEMA)
        results = index_qualified(
            [batch],
            store=self.store,
            provider=self.provider,
            gateway=self.gateway,
            history=self.history,
            limiter=RateLimiter(rate),
            policy=IndexingPolicy(**policy),
            meter=meter,
        )
        return {r["key"]: r for b in results for r in b.to_pylist()}

    def register_calls(self) -> int:
        return sum(1 for r in self.riv.requests if r.path.endswith("/register"))


@pytest.fixture
def head(tmp_path: Path) -> Iterator[World]:
    with RivStandIn(version="head") as riv:
        yield World(tmp_path, riv)


# ---- 1. request shape ----


@pytest.mark.parametrize("version", ["head", "pre-98f4a0d"])
def test_registrations_succeed_on_riv_before_and_after_98f4a0d(tmp_path: Path, version: str) -> None:
    with RivStandIn(version=version) as riv:
        world = World(tmp_path, riv)
        rows = [world.put("ann", properties={"team": "blue"}), world.put("ben")]
        out = world.index(rows)
        assert [r["outcome"] for r in out.values()] == ["indexed", "indexed"]
        assert riv.faces_for("ann") == riv.faces_for("ben") == 1
        assert riv.properties_for("ann") == [{"team": "blue"}]


def test_by_reference_riv_reads_the_image_from_s3_itself(tmp_path: Path) -> None:
    store = LocalObjectStore(root=str(tmp_path / "store"))

    def fetch(bucket: str, key: str) -> Optional[bytes]:  # RIV's S3 read: no version, the name as sent
        try:
            return store.get_bytes(bucket, key)
        except Exception:
            return None

    with RivStandIn(version="head", fetch_object=fetch) as riv:
        world = World(tmp_path, riv)
        world.gateway = RivHttpGateway(url=riv.url, image_mode="by_reference")
        out = world.index([world.put("cy")])
        assert [r["outcome"] for r in out.values()] == ["indexed"] and riv.faces_for("cy") == 1
        assert all("Image" not in r.body for r in riv.requests)


# ---- 2. the error name decides ----


@pytest.mark.parametrize(
    "error",
    [
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "TransientError",
        "Lambda.TooManyRequestsException",
    ],
)
def test_throttling_and_passing_errors_are_retried_then_registered(head: World, error: str) -> None:
    head.riv.throttle(2, error=error)
    [row] = head.index([head.put("dee")]).values()
    assert (row["outcome"], row["attempts"]) == ("indexed", 3)
    assert head.riv.faces_for("dee") == 1


def test_throttling_past_the_attempts_is_transient_and_the_next_run_registers(head: World) -> None:
    head.riv.throttle(2)
    rows = [head.put("eli")]
    [first] = head.index(rows, max_attempts=2).values()
    assert first["outcome"] == "failed_transient" and first["reason"].startswith("ThrottlingException")
    [second] = head.index(rows, owner="run-2").values()
    assert second["outcome"] == "indexed" and head.riv.faces_for("eli") == 1


@pytest.mark.parametrize("error", ["ResourceNotFoundException", "KeyError"])
def test_a_deployment_error_stops_the_run_naming_error_and_url(head: World, error: str) -> None:
    head.riv.inject(1, error)
    rows = [head.put("fay")]
    with pytest.raises(DeploymentError) as stopped:
        head.index(rows, concurrency=1)
    assert error in str(stopped.value) and head.riv.url in str(stopped.value)
    ref = ObjectRef(BUCKET, rows[0]["key"])
    assert head.history.claim(ref, rows[0]["e_tag"], "run-2", 60)  # left free for the next run


def test_a_face_refused_by_riv_is_permanent_with_rivs_name(head: World) -> None:
    image = make_png("gil", size=120, face="sunglasses")
    [row] = head.index([head.put("gil", image=image)]).values()
    assert row["outcome"] == "failed_permanent" and row["reason"].startswith("SunglassesDetectedException")


# ---- 3. user ids RIV can index ----


def test_ids_riv_cannot_index_are_refused_at_qualification_before_any_call(head: World) -> None:
    for user_id in ("bob@example.com", "dave smith", "josé", "al\u200bice"):
        row = head.put(user_id)
        assert (row["qualified"], row["reason"]) == (False, "bad_user_id"), user_id
        assert "[a-zA-Z0-9_.\\-:]+" in row["detail"] or "invisible" in row["detail"]
    assert head.riv.requests == []


def test_ids_are_sent_lower_cased_and_differ_only_in_case_as_one_user(head: World) -> None:
    rows = [head.put("Hal"), head.put("HAL")]
    assert {r["user_id"] for r in rows} == {"hal"}
    out = head.index(rows)
    # RIV refuses a mixed-case id matching its own face (UserAlreadyExists); lower-cased, it is one user.
    assert [r["outcome"] for r in out.values()] == ["indexed", "indexed"]
    assert head.riv.faces_for("hal") == 2 and {r.user_id for r in head.riv.requests} == {"hal"}


# ---- 4. never register blindly after an unknown outcome ----


def test_a_504_is_settled_with_check_userid_not_registered_again(tmp_path: Path) -> None:
    with RivStandIn(version="head", integration_timeout=0.3, latency=0.8) as riv:
        world = World(tmp_path, riv)
        [row] = world.index([world.put("ida")], settle_after_seconds=1.0).values()
        assert (row["outcome"], row["reason"]) == ("indexed", SETTLED)
        assert riv.faces_for("ida") == 1 and world.register_calls() == 1
        assert [r.status for r in riv.requests] == [504, 200]  # register, then check-userid


def test_a_dropped_connection_after_the_request_left_is_settled(head: World) -> None:
    head.riv.drop_next(1, when="after")
    [row] = head.index([head.put("jon")], settle_after_seconds=0.5).values()
    assert (row["outcome"], row["reason"]) == ("indexed", SETTLED)
    assert head.riv.faces_for("jon") == 1 and head.register_calls() == 1


def test_a_504_whose_workflow_failed_is_called_again(tmp_path: Path) -> None:
    with RivStandIn(version="head", integration_timeout=0.2, latency=0.4) as riv:
        world = World(tmp_path, riv)
        riv.inject(1, "ThrottlingException", step="index")  # the workflow behind the 504 fails at IndexFaces
        [row] = world.index([world.put("kay")], settle_after_seconds=0.6).values()
        # Settled twice: "not registered" after the first 504, so called again; "registered" after the second.
        assert row["outcome"] == "indexed"
        assert riv.faces_for("kay") == 1 and world.register_calls() == 2


def test_without_check_userid_the_call_is_made_again_after_the_workflow_ended(tmp_path: Path) -> None:
    # RIV before check-userid: the load cannot tell, waits for the workflow's end, and calls again;
    # RIV then stores a second face of the same (lower-case) user. The README says so.
    with RivStandIn(version="pre-98f4a0d") as riv:
        world = World(tmp_path, riv)
        riv.drop_next(1, when="after")  # the workflow registers; the answer never arrives
        [row] = world.index([world.put("lee")], settle_after_seconds=0.5).values()
        assert row["outcome"] == "indexed" and riv.faces_for("lee") == 2 and world.register_calls() == 2


def test_a_claim_left_by_a_dead_run_is_settled_before_any_call(head: World) -> None:
    row = head.put("max")
    ref = ObjectRef(BUCKET, row["key"])
    assert head.history.claim(ref, row["e_tag"], "dead-run", lease_seconds=0.05)
    image = head.store.get_bytes(BUCKET, row["key"])
    head.gateway.register("max", image, {}, source=ref)  # the dead run's call went through
    time.sleep(0.1)
    [out] = head.index([row]).values()
    assert (out["outcome"], out["reason"]) == ("indexed", SETTLED)
    assert head.riv.faces_for("max") == 1 and head.register_calls() == 1


def test_an_unknown_outcome_past_the_attempts_is_recorded_for_the_next_run_to_settle(tmp_path: Path) -> None:
    with RivStandIn(version="head", integration_timeout=0.2, latency=0.5) as riv:
        world = World(tmp_path, riv)
        rows = [world.put("ned")]
        riv.inject(1, "ThrottlingException", step="index")  # the first workflow fails behind its 504
        [first] = world.index(rows, max_attempts=1, settle_after_seconds=0.0).values()
        assert first["outcome"] == "failed_transient" and first["reason"].startswith(OUTCOME_UNKNOWN)
        record = world.history.lookup([ObjectRef(BUCKET, rows[0]["key"])])[ObjectRef(BUCKET, rows[0]["key"])]
        assert record.status is HistoryStatus.FAILED_TRANSIENT and record.reason.startswith(OUTCOME_UNKNOWN)
        riv.set_latency(0.0)
        [second] = world.index(rows, owner="run-2", settle_after_seconds=0.6).values()
        assert second["outcome"] == "indexed" and riv.faces_for("ned") == 1


def test_the_claim_is_renewed_as_a_call_leaves_once_half_its_lease_has_gone(head: World) -> None:
    # A lease shorter than the backoff: without renewal it would lapse before the second call.
    head.riv.throttle(1)
    rows = [head.put("oda")]
    [row] = head.index(
        rows, lease_seconds=0.3, backoff_base_seconds=0.5, backoff_cap_seconds=0.5, rng=random.Random(3)
    ).values()
    assert row["outcome"] == "indexed" and head.riv.faces_for("oda") == 1


# ---- 5. the configured rate at the gateway's real speed ----


def test_the_rate_is_reached_at_rivs_latency_and_never_exceeded(tmp_path: Path) -> None:
    rate, latency = 10.0, 1.0  # 10 calls in flight needed; a fixed 8 gave 8/s
    with RivStandIn(version="head", latency=latency) as riv:
        world = World(tmp_path, riv)
        rows = [world.put(f"user-{i}") for i in range(50)]
        meter = CallMeter(rate, 64)
        out = world.index(rows, rate=rate, meter=meter)
        assert all(r["outcome"] == "indexed" for r in out.values())
        figures = meter.figures()
        starts = riv.workflow_starts
        achieved = (len(starts) - 1) / (starts[-1] - starts[0])
        assert achieved >= 0.9 * rate, figures.summary()
        # Never more than the rate in any one-second window of calls sent (the gateway's clock adds
        # its own scheduling jitter on a loaded machine: shown, not asserted).
        assert figures.most_in_one_second <= rate
        print(f"at the gateway: {max_calls_in_any_window(starts)} in the busiest second; {figures.summary()}")
        assert figures.calls == 50 and figures.latency_mean_seconds >= latency * 0.9
        assert figures.in_flight_peak >= 9 and not figures.bound_limits


def test_the_bound_is_named_when_it_limits_the_rate(tmp_path: Path) -> None:
    with RivStandIn(version="head", latency=0.5) as riv:
        world = World(tmp_path, riv)
        meter = CallMeter(20.0, 2)
        world.index([world.put(f"u-{i}") for i in range(12)], rate=20.0, concurrency=2, meter=meter)
        figures = meter.figures()
        assert figures.bound_limits and "raise RIVBULK_INDEX_CONCURRENCY" in figures.summary()
        assert figures.in_flight_peak <= 2


# ---- 6. bodies RIV cannot take ----


def test_an_apostrophe_and_an_image_too_large_for_the_workflow_are_refused_before_any_call(head: World) -> None:
    apostrophe = head.put("pam", properties={"surname": "O'Brien"})
    big = head.put("quin", image=make_png("quin", size=300, noise=True))  # ~270 KB: over 256 KiB as base64
    assert big["size"] > largest_inline_image()
    out = head.index([apostrophe, big])
    assert out[apostrophe["key"]]["outcome"] == "failed_permanent"
    assert out[apostrophe["key"]]["reason"].startswith("apostrophe_in_request:")
    assert out[big["key"]]["outcome"] == "failed_permanent"
    assert out[big["key"]]["reason"].startswith("too_large_for_riv:")
    assert head.riv.requests == []


# ---- 7. the embedded registry answers as RIV does ----


def test_the_embedded_registry_and_riv_give_the_same_outcomes(tmp_path: Path) -> None:
    first, second = face_image(901), face_image(902)
    script = [("ann", first), ("ann", first), ("bob", first), ("ann", second), ("Ann", second)]
    with RivStandIn(version="head") as riv:
        over_http = RivHttpGateway(url=riv.url)
        embedded = LocalRegistryGateway(db_path=str(tmp_path / "registry.sqlite"))
        outcomes = [
            [(r.outcome, r.reason.split(":")[0]) for r in (gateway.register(u, img, {}) for u, img in script)]
            for gateway in (over_http, embedded)
        ]
        assert (
            outcomes[0]
            == outcomes[1]
            == [
                (Outcome.INDEXED, "SUCCEEDED"),
                (Outcome.INDEXED, "SUCCEEDED"),
                (Outcome.FAILED_PERMANENT, "UserAlreadyExists"),
                (Outcome.INDEXED, "SUCCEEDED"),
                (Outcome.INDEXED, "SUCCEEDED"),
            ]
        )
        assert riv.faces_for("ann") == 4 and {u["user_id"]: u["registrations"] for u in embedded.users()} == {"ann": 4}
        assert over_http.user_exists("Ann") is embedded.user_exists("Ann") is True
        assert over_http.user_exists("bob") is embedded.user_exists("bob") is False


def test_the_stand_in_refuses_the_old_body_as_head_riv_does(head: World) -> None:
    # What today's RIV did to every call of the old client: KeyError after two paid calls.
    import base64

    body = {"UserId": "rex", "Image": base64.b64encode(face_image(903)).decode(), "Properties": {}}
    answer = requests.post(head.riv.url + "/register", json=body, timeout=5).json()
    assert (answer["status"], answer["error"]) == ("FAILED", "KeyError")


class _HistoryThatFailsOneWrite:
    """The real SQLite history, but the first outcome write fails (DynamoDB unreachable after a SUCCEEDED)."""

    def __init__(self, real: SqliteImportHistory) -> None:
        self.real = real
        self.failed = False

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def record(self, record) -> None:
        if not self.failed:
            self.failed = True
            from rivbulk_pipeline.core.errors import HistoryError

            raise HistoryError("the history is unreachable")
        self.real.record(record)


def test_a_success_whose_history_write_failed_is_settled_by_the_next_run(head: World) -> None:
    rows = [head.put("pia")]
    head.history, real = _HistoryThatFailsOneWrite(head.history), head.history  # type: ignore[assignment]
    [first] = head.index(rows, lease_seconds=0.2).values()
    assert first["outcome"] == "skipped" and "not recorded" in first["reason"]
    assert head.riv.faces_for("pia") == 1
    time.sleep(0.3)  # the claim it left expires
    head.history = real
    [second] = head.index(rows, owner="run-2").values()
    assert (second["outcome"], second["reason"]) == ("indexed", SETTLED)
    assert head.riv.faces_for("pia") == 1 and head.register_calls() == 1
