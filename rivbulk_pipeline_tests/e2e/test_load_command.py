"""`rivbulk load`, as a scheduler runs it: a process with the environment, DAGSTER_HOME on the
production instance config (real Postgres), moto's S3/DynamoDB/Secrets Manager and the loopback
gateway. Checked: the exit status, the JSON records printed (started, then processed/failed),
the record written to S3, and the run as the instance recorded it.

The dates, oldest first: D1 holds the demo's objects (five the gateway or the client refuse for
good), D2 adds zoe, D3 adds yusuf. The tests run in order, each on what the previous left.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator, Optional

import dagster as dg
import pytest

from rivbulk_pipeline.cli.demo import DEMO_CASES
from rivbulk_pipeline.cli.load import EXIT_CONFIGURATION, EXIT_OBJECTS_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_RUN_FAILED
from rivbulk_pipeline.core.rules.tags import tag_lookup
from rivbulk_pipeline.run_launchers import PID_TAG
from rivbulk_pipeline_tests.support.production_world import BIN, World, add_date, production_world

pytestmark = pytest.mark.timeout(300)

INDEXED = [c for c in DEMO_CASES if c.expect == "indexed"]
FAILED = [c for c in DEMO_CASES if c.expect.startswith("failed:")]
RESULT_BUCKET = "riv-prod-output"


@dataclass
class Load:
    code: int
    records: list[dict]  # every JSON line printed, in order
    stderr: str

    @property
    def final(self) -> dict:
        return self.records[-1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        with production_world(tmp_path_factory.mktemp("load"), mp) as built:
            built.env["DAGSTER_HOME"] = str(built.dagster_home("dagster_home", launcher="default"))
            yield built


@pytest.fixture(scope="module")
def instance(world: World) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_config(world.env["DAGSTER_HOME"]) as opened:
        yield opened


def rivbulk_load(world: World, *args: str, env: Optional[dict] = None) -> Load:
    done = subprocess.run(
        [str(BIN / "rivbulk"), "load", *args], env=env or world.env, capture_output=True, text=True, timeout=240
    )
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert records, done.stdout + done.stderr[-3000:]
    return Load(done.returncode, records, done.stderr)


def test_a_date_with_permanent_failures_exits_3_and_says_how_many(world: World, instance: dg.DagsterInstance) -> None:
    date = world.dates[0]
    result_uri = f"s3://{RESULT_BUCKET}/load-results/{date}.json"
    load = rivbulk_load(world, "--date", date, "--result-uri", result_uri)
    assert load.code == EXIT_OBJECTS_FAILED, load.stderr[-3000:]
    started, final = load.records
    assert started["status"] == "started" and started["inventory_date"] == date and started["run_id"]
    assert final["status"] == "processed" and final["run_id"] == started["run_id"] and final["exit_code"] == 3
    assert final["outcomes"] == {
        "indexed": len(INDEXED),
        "failed_permanent": len(FAILED),
        "failed_transient": 0,
        "skipped": 0,
    }
    assert final["qualified"] == len(INDEXED) + len(FAILED)
    assert final["not_qualified"]["no_user_id"] == 1 and final["error"] is None
    # The run is in the deployment's instance (Postgres), like one the daemon started.
    run = instance.get_run_by_id(final["run_id"])
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS and run.tags["dagster/partition"] == date
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    # The record in S3 is the final one.
    body = world.client("s3").get_object(Bucket=RESULT_BUCKET, Key=f"load-results/{date}.json")["Body"].read()
    assert json.loads(body) == final
    # Counts only: no user id or object key in the record.
    text = json.dumps(load.records)
    assert not [c.key for c in INDEXED + FAILED if tag_lookup(c.tags, "UserId") in text or c.key in text]


def test_a_broken_configuration_exits_2_before_any_run(world: World, instance: dg.DagsterInstance) -> None:
    runs_before = len(instance.get_runs())
    load = rivbulk_load(world, env={**world.env, "RIVBULK_INDEX_RATE": "0"})
    assert load.code == EXIT_CONFIGURATION
    (record,) = load.records
    assert record["status"] == "failed" and record["run_id"] is None and record["exit_code"] == 2
    assert "RIVBULK_INDEX_RATE is not valid" in record["error"]

    no_home = {k: v for k, v in world.env.items() if k != "DAGSTER_HOME"}
    load = rivbulk_load(world, "--date", world.dates[1], env=no_home)
    assert (load.code, load.final["status"]) == (EXIT_CONFIGURATION, "failed") and "DAGSTER_HOME" in load.final["error"]

    load = rivbulk_load(world, "--date", "2026-13-01")
    assert load.code == EXIT_CONFIGURATION and "YYYY-MM-DD" in load.final["error"]
    assert len(instance.get_runs()) == runs_before  # nothing was started


def test_a_run_that_fails_exits_1_and_frees_the_objects(world: World, instance: dg.DagsterInstance) -> None:
    """Settings valid, deployment wrong: the API key's secret does not exist. The run fails at the
    first registration (a deployment fault), nobody is registered, and the claim is released."""
    missing = world.secret_arn.replace("gateway-api-key", "no-such-secret")
    calls_before = len(world.riv.requests)
    load = rivbulk_load(world, "--date", world.dates[1], env={**world.env, "RIVBULK_GATEWAY_API_KEY_SECRET": missing})
    assert load.code == EXIT_RUN_FAILED, load.stderr[-3000:]
    final = load.final
    assert final["status"] == "failed" and final["exit_code"] == 1
    assert "indexed_users" in final["error"] and "no-such-secret" in final["error"]
    assert instance.get_run_by_id(final["run_id"]).status == dg.DagsterRunStatus.FAILURE
    assert len(world.riv.requests) == calls_before
    items = world.client("dynamodb").scan(TableName=world.settings.history_table)["Items"]
    assert "claimed" not in {item["status"]["S"] for item in items} or all(
        item["claim_expires_at"]["N"] == "0" for item in items if item["status"]["S"] == "claimed"
    )


def test_a_clean_date_exits_0_and_the_newest_report_is_the_default(world: World, instance: dg.DagsterInstance) -> None:
    load = rivbulk_load(world)  # no --date: the newest complete report, D3
    assert load.code == EXIT_OK, load.stderr[-3000:]
    final = load.final
    assert final["inventory_date"] == world.dates[-1] and final["status"] == "processed" and final["exit_code"] == 0
    # zoe (D2, left free by the failed run) and yusuf (D3); everyone else was decided before.
    assert final["outcomes"] == {"indexed": 2, "failed_permanent": 0, "failed_transient": 0, "skipped": 0}
    assert final["not_qualified"]["already_indexed"] == len(INDEXED)
    assert world.riv.registrations.get("zoe") == 1 and world.riv.registrations.get("yusuf") == 1
    assert instance.get_run_by_id(final["run_id"]).status == dg.DagsterRunStatus.SUCCESS


def test_a_date_already_running_is_refused_and_a_killed_load_frees_its_slot(
    world: World, instance: dg.DagsterInstance
) -> None:
    """Issue 17: a second load of a date that is running exits 4 without a run; the first, killed
    with SIGKILL mid-indexing, is failed by the next load on this machine, which then gets the
    riv_gateway slot (limit 1: it would wait for ever otherwise) and registers the rest once."""
    import os
    import signal
    import time

    users = [f"load-{n:02d}" for n in range(40)]  # 20 s at 2 per second: time for the second load
    date = add_date(world, users, datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0), seed=700)
    slow = {
        **world.env,
        "RIVBULK_INDEX_RATE": "2",
        "RIVBULK_CLAIM_LEASE_SECONDS": "3",
        "RIVBULK_GATEWAY_TIMEOUT_SECONDS": "1",
        "RIVBULK_GATEWAY_WORKFLOW_TIMEOUT_SECONDS": "0.4",
    }
    world.riv.set_latency(0.2)
    first = subprocess.Popen(
        [str(BIN / "rivbulk"), "load", "--date", date],
        env=slow,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while sum(1 for u in users if world.riv.registrations.get(u)) < 3:
            assert first.poll() is None and time.monotonic() < deadline, "the first load never got to indexing"
            time.sleep(0.1)
        (running,) = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": date}))
        assert running.status == dg.DagsterRunStatus.STARTED and running.tags[PID_TAG] == str(first.pid)

        second = rivbulk_load(world, "--date", date, env=slow)
        assert second.code == EXIT_REFUSED and len(second.records) == 1, second.stderr[-2000:]
        assert (
            second.final["status"] == "failed"
            and running.run_id in second.final["error"]
            and second.final["run_id"] is None
        )
        assert len(instance.get_runs(dg.RunsFilter(tags={"dagster/partition": date}))) == 1  # no second run

        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
    assert instance.get_run_by_id(running.run_id).status == dg.DagsterRunStatus.STARTED  # nobody said otherwise yet
    world.riv.set_latency(0.0)
    third = rivbulk_load(world, "--date", date, env=slow)
    assert third.code == EXIT_OK, third.stderr[-3000:]
    assert f"run {running.run_id} had died" in third.stderr
    dead = instance.get_run_by_id(running.run_id)
    assert dead.status == dg.DagsterRunStatus.FAILURE
    assert not any(
        s.run_id == running.run_id for s in instance.event_log_storage.get_concurrency_info("riv_gateway").claimed_slots
    )
    counts = {u: world.riv.registrations.get(u, 0) for u in users}
    assert all(counts.values()), counts  # nothing lost
    assert sum(counts.values()) - len(users) <= 8, counts  # at most the calls in flight at the kill, repeated


def test_two_loads_of_one_date_started_together_run_one_after_the_other_never_at_once(
    world: World, instance: dg.DagsterInstance
) -> None:
    """Started in the same instant, both may pass the check before a run exists; the run guard
    (run_guard.py) stops the one created second as its first step starts. Either way one load
    processes the date and the other exits 4 naming it."""
    date = world.dates[-1]
    before = {r.run_id for r in instance.get_runs(dg.RunsFilter(tags={"dagster/partition": date}))}
    loads = [
        subprocess.Popen(
            [str(BIN / "rivbulk"), "load", "--date", date], env=world.env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    finals = []
    for process in loads:
        out, _ = process.communicate(timeout=240)
        finals.append([json.loads(line) for line in out.splitlines() if line.startswith("{")][-1])
    done, refused = sorted(finals, key=lambda f: f["exit_code"])
    assert (done["exit_code"], done["status"], refused["exit_code"]) == (EXIT_OK, "processed", EXIT_REFUSED), finals
    assert refused["error"].startswith(f"refused: run {done['run_id']} of {date}"), refused
    runs = {
        r.run_id: r
        for r in instance.get_runs(dg.RunsFilter(tags={"dagster/partition": date}))
        if r.run_id not in before
    }
    assert runs[done["run_id"]].status == dg.DagsterRunStatus.SUCCESS
    if refused["run_id"] is not None:  # refused by the guard: its run stopped at its first step
        assert runs[refused["run_id"]].status == dg.DagsterRunStatus.FAILURE
        started = instance.all_logs(refused["run_id"], of_type=dg.DagsterEventType.STEP_START)
        assert [e.step_key for e in started] == ["inventory_report"]  # and it stopped there
    assert len(runs) == (1 if refused["run_id"] is None else 2)
    print(f"refused {'by the run guard' if refused['run_id'] else 'before its run existed'}")
