"""Run launchers that tell Dagster's run monitoring whether a run's worker is still alive.

A run killed without cleaning up (SIGKILL, OOM, a reboot, a stopped container) stays STARTED
and keeps its `riv_gateway` pool slot. The daemon's run monitoring fails a STARTED run only
when the run launcher reports its worker dead (`check_run_worker_health`), and frees the slots
of failed runs (`run_monitoring.free_slots_after_run_end_seconds`). Dagster's DefaultRunLauncher
has no health check, so this module adds one:

- a run launched by the code server: the worker is the process whose pid Dagster records in the
  run's "Started process for run (pid: N)" engine event; alive means a process with that pid
  exists and started no later than that event (a pid reused after the worker died, or after a
  reboot, started later);
- a run of `rivbulk load` (executed in its own process, not launched): the process recorded in
  its `rivbulk/worker_*` tags (`worker_tags()`), checked the same way when it ran on this machine.

A worker this machine cannot see (another host, or no process recorded) is reported RUNNING: a
live run is never failed on a guess; `run_monitoring.max_runtime_seconds` bounds those.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping, Optional

import psutil
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster_aws.ecs import EcsRunLauncher

HOST_TAG = "rivbulk/worker_host"
PID_TAG = "rivbulk/worker_pid"
STARTED_TAG = "rivbulk/worker_started"
# Process start times and event timestamps come from two clocks read at different moments.
CLOCK_SLACK_SECONDS = 1.0
_STARTED_PROCESS = "Started process for run"


def this_machine() -> str:
    """Names this machine until its next boot: the host name and the boot time."""
    return f"{socket.gethostname()}@{int(psutil.boot_time())}"


def worker_tags() -> dict[str, str]:
    """Tags naming the current process as a run's worker (for runs executed in this process)."""
    tags = {
        HOST_TAG: this_machine(),
        PID_TAG: str(os.getpid()),
        STARTED_TAG: f"{psutil.Process().create_time():.3f}",
    }
    if os.environ.get("ECS_CONTAINER_METADATA_URI_V4"):  # an ECS task: EcsRunLauncher's own check applies
        from dagster_aws.ecs.tasks import get_current_ecs_task_metadata

        task = get_current_ecs_task_metadata()
        tags.update({"ecs/task_arn": task.task_arn, "ecs/cluster": task.cluster})
    return tags


def process_alive(pid: int, *, started_at: Optional[float] = None, not_after: Optional[float] = None) -> bool:
    """Whether process `pid` lives (not a zombie) and is the one meant: started at `started_at`,
    or no later than `not_after`."""
    try:
        process = psutil.Process(pid)
        created = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    if started_at is not None and abs(created - started_at) > CLOCK_SLACK_SECONDS:
        return False
    return not_after is None or created <= not_after + CLOCK_SLACK_SECONDS


def _started_process_event(instance: DagsterInstance, run_id: str) -> Optional[tuple[int, float]]:
    """The pid and time of the newest "Started process for run" event of the run (a resumed run
    has several), or None."""
    found = None
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        if not (record.message or "").startswith(_STARTED_PROCESS) or event is None:
            continue
        pid = event.engine_event_data.metadata.get("pid") if event.engine_event_data else None
        if pid is not None and str(pid.value).isdigit():
            found = (int(pid.value), record.timestamp)
    return found


def _from_tags(tags: Mapping[str, str]) -> Optional[CheckRunHealthResult]:
    if PID_TAG not in tags:
        return None
    if tags.get(HOST_TAG) != this_machine():
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker on {tags.get(HOST_TAG)}: not visible from here")
    pid, started = int(tags[PID_TAG]), float(tags[STARTED_TAG])
    if process_alive(pid, started_at=started):
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker process {pid} is alive")
    return CheckRunHealthResult(WorkerStatus.FAILED, f"worker process {pid} is gone (killed, or the machine restarted)")


def local_worker_health(instance: DagsterInstance, run: DagsterRun) -> CheckRunHealthResult:
    """The health of a run whose worker is a process of this machine (see the module's doc)."""
    tagged = _from_tags(run.tags)
    if tagged is not None:
        return tagged
    started = _started_process_event(instance, run.run_id)
    if started is None:
        return CheckRunHealthResult(WorkerStatus.RUNNING, "no worker process recorded: not checked")
    pid, at = started
    if process_alive(pid, not_after=at):
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker process {pid} is alive")
    return CheckRunHealthResult(WorkerStatus.FAILED, f"worker process {pid} is gone (killed, or the machine restarted)")


def fail_if_worker_dead(instance: DagsterInstance, run: DagsterRun, who: str) -> bool:
    """Fail `run` and free its pool slots at once if its worker is a process of this machine that
    is gone (nothing else can call the gateway for it); whether it did. `who` names the caller in
    the failure's message."""
    health = local_worker_health(instance, run)
    if health.status != WorkerStatus.FAILED:
        return False
    instance.report_run_failed(run, f"{who}: {health.msg}")
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return True


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher (each run a process of the code server) with a worker health check.

    The daemon must see the code server's processes: the same machine (`rivbulk dev`,
    `dagster dev`) or, with docker compose, the code server's pid namespace.
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        return local_worker_health(self._instance, run)


class RivbulkEcsRunLauncher(EcsRunLauncher):
    """EcsRunLauncher that also knows `rivbulk load`'s runs. Those carry their ECS task in their
    tags when they run in ECS (EcsRunLauncher's check applies); elsewhere, without the tags, the
    base launcher would report UNKNOWN and the daemon would fail a live run."""

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if "ecs/task_arn" not in run.tags and PID_TAG in run.tags:
            return local_worker_health(self._instance, run)
        return super().check_run_worker_health(run)
