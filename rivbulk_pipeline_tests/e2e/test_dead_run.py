"""Issue 17's "done when": a dead run frees what it held.

Every process of the deployment is killed with SIGKILL while a run is indexing (what an OOM kill,
a reboot or a stopped container does); the deployment is started again on the same instance and
the next date's report arrives. Within the bounds below, the killed run is shown FAILED, its
`riv_gateway` slot is freed, and the next date's run succeeds with each of its new users
registered once (read back from the gateway's own record).

Twice: `rivbulk dev` on the `aws` deployment (its own SQLite instance config), and production's
`deploy/dagster.yaml` (Postgres from pgserver, `dagster code-server start`, `dagster-daemon run`)
with LocalRunLauncher's health check standing in for EcsRunLauncher's (ECS cannot run tasks
here). moto's server plays AWS, the RIV stand-in the gateway on 127.0.0.1, each workflow taking 0.2 s.
Run monitoring polls every 2 s instead of 30-60 s (instance config), so the test is quick.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg
import psutil
import pytest
import yaml

from rivbulk_pipeline.defs.pools import GATEWAY_POOL
from rivbulk_pipeline_tests.support.dev_server import DevServer
from rivbulk_pipeline_tests.support.production_world import (
    BIN,
    World,
    add_date,
    code_server,
    free_port,
    production_world,
    stop,
    workspace_file,
)

pytestmark = pytest.mark.timeout(600)

# After the restart: how long the killed run may still show as running, and how long until
# the next date's run has succeeded (start-up, a sensor tick every 30 s, four steps).
FAILED_WITHIN_SECONDS = 90
NEXT_RUN_WITHIN_SECONDS = 300
FAST_MONITORING = {"poll_interval_seconds": 2, "free_slots_after_run_end_seconds": 2}
KILLED_USERS = [f"killed-{n:02d}" for n in range(30)]
NEXT_USERS = ["next-ada", "next-bo", "next-cy"]
# A lease outliving a call (timeout) and RIV's workflow, scaled down with them.
SLOW_ENV = {
    "RIVBULK_INDEX_RATE": "4",
    "RIVBULK_CLAIM_LEASE_SECONDS": "5",
    "RIVBULK_GATEWAY_TIMEOUT_SECONDS": "1",
    "RIVBULK_GATEWAY_WORKFLOW_TIMEOUT_SECONDS": "1",
}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        with production_world(tmp_path, mp) as built:
            built.riv.set_latency(0.2)
            built.env.update(SLOW_ENV)
            yield built


def _today_at_one() -> datetime:
    return datetime.combine(datetime.now(timezone.utc).date(), datetime.min.time(), timezone.utc) + timedelta(hours=1)


def kill_everything(roots: list[int]) -> int:
    """SIGKILL each root, its process group and every descendant, at once; returns how many died."""
    victims = []
    for pid in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            victims += [root, *root.children(recursive=True)]
    for pid in roots:  # a group of its own (rivbulk dev's session), never the test's
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) != os.getpgid(0):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.kill()
    gone, alive = psutil.wait_procs(victims, timeout=30)
    assert not alive, alive
    return len(gone)


def runs_of(instance: dg.DagsterInstance, date: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(job_name="bulk_load_job", tags={"dagster/partition": date})))


def wait_until_indexing(instance: dg.DagsterInstance, world: World, date: str, deadline: float) -> dg.DagsterRun:
    """The date's run, once it has registered a few of its users (so the kill lands mid-indexing)."""
    while True:
        runs = runs_of(instance, date)
        done = [u for u in KILLED_USERS if world.riv.registrations.get(u)]
        if runs and len(done) >= 3:
            (run,) = runs
            assert run.status == dg.DagsterRunStatus.STARTED, run.status
            return run
        assert time.monotonic() < deadline, f"the run of {date} never got to indexing: {runs}"
        time.sleep(0.2)


def holds_slot(instance: dg.DagsterInstance, run_id: str) -> bool:
    info = instance.event_log_storage.get_concurrency_info(GATEWAY_POOL)
    return any(slot.run_id == run_id for slot in info.claimed_slots)


def watch_recovery(instance: dg.DagsterInstance, killed: str, next_date: str, restarted: float) -> dict[str, float]:
    """Seconds after the restart until the killed run is FAILED, its slot freed, and the next
    date's run has succeeded; fails at the bounds."""
    seen: dict[str, float] = {}
    while "next_success" not in seen:
        now = time.monotonic() - restarted
        run = instance.get_run_by_id(killed)
        if "failed" not in seen and run.status == dg.DagsterRunStatus.FAILURE:
            seen["failed"] = now
        if "failed" in seen and "freed" not in seen and not holds_slot(instance, killed):
            seen["freed"] = now
        next_runs = runs_of(instance, next_date)
        assert not [r for r in next_runs if r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)], (
            next_runs
        )
        if next_runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in next_runs) and "freed" in seen:
            seen["next_success"] = now
        assert "failed" in seen or now < FAILED_WITHIN_SECONDS, f"the killed run still {run.status} after {now:.0f}s"
        assert now < NEXT_RUN_WITHIN_SECONDS, f"after {now:.0f}s: {seen}, next runs {[r.status for r in next_runs]}"
        time.sleep(0.5)
    return seen


def assert_recovered(
    instance: dg.DagsterInstance, world: World, killed: str, next_date: str, seen: dict[str, float], label: str
) -> None:
    print(
        f"[{label}] after the restart: killed run FAILED at {seen['failed']:.1f}s, slot freed at "
        f"{seen['freed']:.1f}s, next date's run SUCCESS at {seen['next_success']:.1f}s"
    )
    failure = [e for e in instance.all_logs(killed) if e.dagster_event_type == dg.DagsterEventType.RUN_FAILURE]
    assert failure and "is gone" in failure[-1].message, [e.message for e in failure]  # failed by the health check
    (next_run,) = runs_of(instance, next_date)
    assert next_run.status == dg.DagsterRunStatus.SUCCESS
    assert {u: world.riv.registrations.get(u) for u in NEXT_USERS} == {u: 1 for u in NEXT_USERS}
    # A call the kill cut off still registered its user in RIV: whoever takes the object over next
    # settles it with check-userid first, so nobody has a second face.
    assert all(world.riv.registrations.get(u, 0) <= 1 for u in KILLED_USERS), world.riv.registrations
    assert not holds_slot(instance, killed)


def test_rivbulk_dev_on_aws_after_every_process_is_killed(world: World, tmp_path: Path) -> None:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    # Only the intervals are the test's: launcher, pools and retries come from `rivbulk dev` itself.
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump({"run_monitoring": {"enabled": True, **FAST_MONITORING}}))
    killed_date = add_date(world, KILLED_USERS, _today_at_one(), seed=400)
    env = {k: v for k, v in world.env.items() if k.startswith(("RIVBULK_", "AWS_"))}
    server = DevServer(tmp_path / "home", dagster_home, tmp_path / "dev-1.log", extra_env=env)
    second: Optional[DevServer] = None
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            run = wait_until_indexing(instance, world, killed_date, time.monotonic() + 240)
            print(f"[rivbulk dev] killed {kill_everything([server.proc.pid])} processes mid-indexing")
            assert (
                instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
            )  # nobody could say otherwise
            assert holds_slot(instance, run.run_id)

            second = DevServer(tmp_path / "home", dagster_home, tmp_path / "dev-2.log", extra_env=env)
            restarted = time.monotonic()
            next_date = add_date(world, NEXT_USERS, _today_at_one() + timedelta(days=1), seed=500)
            seen = watch_recovery(instance, run.run_id, next_date, restarted)
            assert_recovered(instance, world, run.run_id, next_date, seen, "rivbulk dev")
            config = yaml.safe_load((dagster_home / "dagster.yaml").read_text())
            assert config["run_launcher"]["class"] == "LocalRunLauncher"  # written by `rivbulk dev`
    except BaseException:
        for s in (server, second):
            if s is not None:
                print(f"---- {s.log_path} ----\n{s.log_tail(80)}")
        raise
    finally:
        for s in (server, second):
            if s is not None:
                s.stop()


def test_production_instance_after_every_process_is_killed(world: World, tmp_path: Path) -> None:
    home = world.dagster_home("dagster_home_kill", launcher="default")
    text = (home / "dagster.yaml").read_text()
    for name, seconds in FAST_MONITORING.items():
        text, count = re.subn(rf"{name}: \d+", f"{name}: {seconds}", text)
        assert count == 1, name
    (home / "dagster.yaml").write_text(text)
    world.env["DAGSTER_HOME"] = str(home)
    killed_date = add_date(world, KILLED_USERS, _today_at_one(), seed=400)

    def deployment(port: int) -> list[subprocess.Popen]:
        server = code_server(world, port)
        daemon = world.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace_file(world, port))])
        return [server, daemon]

    processes = deployment(free_port())
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            run = wait_until_indexing(instance, world, killed_date, time.monotonic() + 240)
            print(f"[production] killed {kill_everything([p.pid for p in processes])} processes mid-indexing")
            assert holds_slot(instance, run.run_id)

            restarted = time.monotonic()
            processes = deployment(free_port())
            next_date = add_date(world, NEXT_USERS, _today_at_one() + timedelta(days=1), seed=500)
            seen = watch_recovery(instance, run.run_id, next_date, restarted)
            assert_recovered(instance, world, run.run_id, next_date, seen, "production")
    except BaseException:
        for log in world.logs[-4:]:
            print(f"---- {log} ----\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        workers = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                workers += psutil.Process(process.pid).children(recursive=True)
        for process in processes:
            stop(process)
        for worker in workers:  # a run worker outlives its code server
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


def test_rivbulk_dev_fills_the_instance_config_and_keeps_the_operators_values(tmp_path: Path) -> None:
    from rivbulk_pipeline.cli import main
    from rivbulk_pipeline.run_launchers import LocalRunLauncher

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        yaml.safe_dump({"run_monitoring": {"poll_interval_seconds": 7}, "run_retries": {"max_retries": 3}})
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        mp.setenv("RIVBULK_HOME", str(tmp_path / "rivbulk"))
        assert main(["dev", "--write-instance"]) == 0
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["run_monitoring"] == {
        "poll_interval_seconds": 7,
        "enabled": True,
        "free_slots_after_run_end_seconds": 30,
        "max_resume_run_attempts": 0,
    }
    assert config["run_retries"] == {"max_retries": 3, "enabled": True, "retry_on_asset_or_op_failure": False}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert (
            isinstance(instance.run_launcher, LocalRunLauncher)
            and instance.run_launcher.supports_check_run_worker_health
        )
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert instance.event_log_storage.get_concurrency_info(GATEWAY_POOL).limit == 1
