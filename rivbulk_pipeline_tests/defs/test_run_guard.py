"""Two runs of one date never run at once: the run created first goes on, a later one stops as
its first step starts (run_guard.py), whoever started either."""

from __future__ import annotations

import signal
import subprocess
import sys

import dagster as dg
import psutil
from dagster._core.storage.tags import PARTITION_NAME_TAG
from dagster._core.utils import make_new_run_id

from rivbulk_pipeline.defs.assets import bulk_load_assets
from rivbulk_pipeline.run_guard import earlier_run_of_the_date
from rivbulk_pipeline.run_launchers import HOST_TAG, PID_TAG, STARTED_TAG, this_machine

DATE = "2026-11-22"


def _recorded_run(
    instance: dg.DagsterInstance, date: str, status: dg.DagsterRunStatus, worker: dict[str, str] | None = None
) -> dg.DagsterRun:
    """A run of `date` as another process (the daemon, another `rivbulk load`) would have recorded it."""
    return instance.add_run(
        dg.DagsterRun(
            job_name="bulk_load_job",
            run_id=make_new_run_id(),
            status=status,
            tags={PARTITION_NAME_TAG: date, **(worker or {})},
        )
    )


def _load(instance: dg.DagsterInstance, resources: dict) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        bulk_load_assets, partition_key=DATE, resources=resources, instance=instance, raise_on_error=False
    )


def test_a_run_created_while_another_of_its_date_is_unfinished_stops_at_its_first_step(demo, instance) -> None:
    settings, home, resources, _ = demo
    calls_before = resources["gateway"].register_calls()  # the demo registers some users itself
    other = _recorded_run(instance, DATE, dg.DagsterRunStatus.STARTED)
    _recorded_run(instance, "2026-11-21", dg.DagsterRunStatus.STARTED)  # another date: no matter

    refused = _load(instance, resources)
    assert not refused.success
    [failure] = [e for e in refused.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    cause = error.cause or error
    assert failure.step_key == "inventory_report" and cause.cls_name == "AnotherRunOfTheDate"
    assert f"refused: run {other.run_id} of {DATE} is STARTED" in cause.message
    assert resources["gateway"].register_calls() == calls_before  # nothing was asked of the registry
    assert not list((home / "store").rglob(f"dt={DATE}"))  # nor any table written for the date

    # The other run ends (here: fails); the date loads.
    instance.report_run_failed(other)
    assert _load(instance, resources).success
    assert resources["gateway"].register_calls() > calls_before


def test_of_two_unfinished_runs_of_a_date_the_first_created_goes_on(instance) -> None:
    first = _recorded_run(instance, DATE, dg.DagsterRunStatus.NOT_STARTED)
    second = _recorded_run(instance, DATE, dg.DagsterRunStatus.STARTING)
    assert earlier_run_of_the_date(instance, first.run_id, DATE) is None
    assert earlier_run_of_the_date(instance, second.run_id, DATE).run_id == first.run_id
    instance.report_run_canceled(first)  # finished runs hold nothing
    assert earlier_run_of_the_date(instance, second.run_id, DATE) is None


def test_an_earlier_run_whose_worker_was_killed_is_failed_and_holds_nothing(demo, instance) -> None:
    """Where no daemon watches (plain `dagster dev` without run monitoring, a materialisation from
    Python), a run killed with SIGKILL stays STARTED; the next run of its date fails it and goes on."""
    settings, home, resources, _ = demo
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = psutil.Process(worker.pid).create_time()
    killed = _recorded_run(
        instance,
        DATE,
        dg.DagsterRunStatus.STARTED,
        {HOST_TAG: this_machine(), PID_TAG: str(worker.pid), STARTED_TAG: f"{started:.3f}"},
    )
    probe = _recorded_run(instance, DATE, dg.DagsterRunStatus.NOT_STARTED)
    assert earlier_run_of_the_date(instance, probe.run_id, DATE).run_id == killed.run_id  # alive: it holds the date
    instance.report_run_canceled(probe)
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    assert _load(instance, resources).success
    dead = instance.get_run_by_id(killed.run_id)
    assert dead.status == dg.DagsterRunStatus.FAILURE
    [failure] = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert f"worker process {worker.pid} is gone" in failure.message and f"of {DATE}" in failure.message
