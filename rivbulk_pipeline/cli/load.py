"""`rivbulk load`: one inventory date as a batch job, for a scheduler (ECS scheduled task, AWS
Batch, a Kubernetes CronJob), without the UI or the daemon.

Settings come from the environment; the run is recorded in the Dagster instance at
`DAGSTER_HOME` like any other (the UI shows it, the `riv_gateway` pool holds for it). A JSON
result record is printed when the run starts and again when it ends, and optionally written to
S3 (or the local store) at the same key each time, so a reader sees `started` until the end.

Exit status (also in docs/production.md):

    0  processed: the run succeeded and no object failed
    1  failed: the run failed (a step raised, e.g. a deployment fault such as a refused API key)
    2  failed before any run: the configuration is broken (settings, DAGSTER_HOME, no report)
    3  processed, but some objects failed (failed_permanent or failed_transient; see the history)
    4  refused: a run of the same date is queued or in progress (its id in the record); no run was
       started, or it stopped as its first step started (run_guard.py)

Guards, as for the daemon's runs: a date already queued or running is refused, not run twice; the
run carries its process in its tags (`run_launchers.worker_tags`), so the daemon's run monitoring
fails it and frees its `riv_gateway` slot if the process dies. Without a daemon, the next
`rivbulk load` on the same machine does that for a dead load before it starts.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, TextIO

EXIT_OK, EXIT_RUN_FAILED, EXIT_CONFIGURATION, EXIT_OBJECTS_FAILED, EXIT_REFUSED = 0, 1, 2, 3, 4
LOAD_TAG = "rivbulk/trigger"


@dataclass
class LoadResult:
    """What a scheduler (or an operator) reads back: never images, properties or user ids."""

    status: str  # started | processed | failed
    inventory_date: Optional[str] = None
    run_id: Optional[str] = None
    report_folder: Optional[str] = None
    started_at: str = field(default_factory=lambda: _now())
    finished_at: Optional[str] = None
    candidates: Optional[int] = None
    qualified: Optional[int] = None
    outcomes: dict[str, int] = field(default_factory=dict)  # indexed, failed_permanent, ...
    not_qualified: dict[str, int] = field(default_factory=dict)  # reason -> count
    error: Optional[str] = None
    exit_code: Optional[int] = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:] or uri.endswith("/"):
        raise ValueError(f"--result-uri must look like s3://bucket/key.json, not {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


class _Reporter:
    """Prints each state of the record as one JSON line and writes it to the result URI."""

    def __init__(self, out: TextIO, result_uri: Optional[str]) -> None:
        self.out, self.result_uri, self.store = out, result_uri, None

    def emit(self, record: LoadResult) -> None:
        self.out.write(record.to_json() + "\n")
        self.out.flush()
        if self.result_uri and self.store is not None:
            bucket, key = _parse_s3_uri(self.result_uri)
            try:
                self.store.put_bytes(bucket, key, (record.to_json() + "\n").encode(), content_type="application/json")
            except Exception as error:  # the record is printed anyway: do not turn a loaded date into a failure
                print(f"rivbulk load: could not write the result record to {self.result_uri}: {error}", file=sys.stderr)


def _metadata_value(result: Any, node: str, name: str) -> Optional[Any]:
    for materialization in result.asset_materializations_for_node(node):
        if name in materialization.metadata:
            return materialization.metadata[name].value
    return None


def _fill_counts(record: LoadResult, result: Any) -> None:
    from ..core.model import Outcome

    record.report_folder = _metadata_value(result, "inventory_report", "report_folder")
    record.candidates = _metadata_value(result, "batch_manifest", "candidates")
    record.qualified = _metadata_value(result, "qualified_objects", "qualified")
    for materialization in result.asset_materializations_for_node("qualified_objects"):
        for name, value in materialization.metadata.items():
            if name.startswith("reason_") and name != "reason_qualified":
                record.not_qualified[name.removeprefix("reason_")] = value.value
    for outcome in Outcome:
        value = _metadata_value(result, "indexed_users", f"outcome_{outcome.value}")
        if value is not None:
            record.outcomes[outcome.value] = value


def _first_failure(result: Any) -> tuple[str, bool]:
    """The first step failure, and whether it was the run guard's refusal (run_guard.py)."""
    from ..run_guard import REFUSED, AnotherRunOfTheDate

    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            cause = error.cause if error.cls_name == "DagsterExecutionStepExecutionError" and error.cause else error
            message = cause.message.strip().splitlines()[0]
            if cause.cls_name == AnotherRunOfTheDate.__name__:
                return message[message.find(REFUSED) :], True
            return f"step {event.step_key} failed: {cause.cls_name}: {message}", False
    return "the run failed", False


def fail_dead_loads(instance: Any) -> list[str]:
    """Fail the unfinished `rivbulk load` runs of this machine whose process is gone, and free
    their pool slots at once. Returns their run ids."""
    import dagster as dg
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    from ..run_launchers import fail_if_worker_dead

    runs = instance.get_runs(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES, tags={LOAD_TAG: "rivbulk load"}))
    return [run.run_id for run in runs if fail_if_worker_dead(instance, run, "rivbulk load")]


def _busy(instance: Any, date: str) -> Optional[str]:
    """Why a run of `date` must not start now (another is queued or in progress), or None."""
    import dagster as dg
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
    from dagster._core.storage.tags import PARTITION_NAME_TAG

    from ..run_guard import refusal

    others = instance.get_runs(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES, tags={PARTITION_NAME_TAG: date}))
    return refusal(others[0], date) if others else None


def load(inventory_date: Optional[str], result_uri: Optional[str], out: TextIO = sys.stdout) -> int:
    """Load one inventory date (the newest complete report's date when None); return the exit status."""
    reporter = _Reporter(out, result_uri)
    record = LoadResult(status="started", inventory_date=inventory_date)

    def fail_before_run(message: str) -> int:
        record.status, record.error, record.finished_at, record.exit_code = (
            "failed",
            message,
            _now(),
            EXIT_CONFIGURATION,
        )
        reporter.emit(record)
        return EXIT_CONFIGURATION

    # ---- configuration: everything that can be wrong before a run exists
    from ..settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
        if result_uri:
            _parse_s3_uri(result_uri)
        if inventory_date is not None:
            datetime.strptime(inventory_date, "%Y-%m-%d")
    except SettingsError as error:
        return fail_before_run(str(error))
    except ValueError as error:
        return fail_before_run(
            f"--date must be YYYY-MM-DD, not {inventory_date!r}" if "time data" in str(error) else str(error)
        )
    if not os.environ.get("DAGSTER_HOME"):
        return fail_before_run("DAGSTER_HOME is not set: the run must be recorded in the deployment's Dagster instance")

    import dagster as dg

    from ..core.errors import RivbulkError
    from ..core.inventory.reports import newest_complete
    from ..definitions import defs
    from ..defs.partitions import inventory_dates

    store = defs.resources["store"]
    reporter.store = store
    try:
        if inventory_date is None:
            newest = newest_complete(store, settings.inventory_bucket, settings.report_root)
            if newest is None:
                return fail_before_run(
                    f"no complete inventory report under s3://{settings.inventory_bucket}/{settings.report_root}/"
                )
            record.inventory_date = newest.inventory_date
        instance = dg.DagsterInstance.get()
    except (RivbulkError, dg.DagsterInvariantViolationError) as error:
        return fail_before_run(str(error))

    # ---- the guards, then the run
    date = record.inventory_date
    assert date is not None
    for run_id in fail_dead_loads(instance):
        print(f"rivbulk load: run {run_id} had died; marked failed and its pool slots freed", file=sys.stderr)
    busy = _busy(instance, date)
    if busy:
        record.status, record.error, record.finished_at, record.exit_code = "failed", busy, _now(), EXIT_REFUSED
        reporter.emit(record)
        return EXIT_REFUSED
    if not instance.has_dynamic_partition(inventory_dates.name, date):
        instance.add_dynamic_partitions(inventory_dates.name, [date])
    record.run_id = str(uuid.uuid4())
    reporter.emit(record)
    job = defs.resolve_job_def("bulk_load_job")
    from ..run_launchers import worker_tags

    result = job.execute_in_process(
        instance=instance,
        partition_key=date,
        run_id=record.run_id,
        raise_on_error=False,
        tags={LOAD_TAG: "rivbulk load", **worker_tags()},
    )
    _fill_counts(record, result)
    record.finished_at = _now()
    if not result.success:
        record.error, refused = _first_failure(result)
        record.status, record.exit_code = "failed", EXIT_REFUSED if refused else EXIT_RUN_FAILED
    else:
        failed = sum(n for outcome, n in record.outcomes.items() if outcome.startswith("failed"))
        record.status, record.exit_code = "processed", EXIT_OBJECTS_FAILED if failed else EXIT_OK
    reporter.emit(record)
    return record.exit_code
