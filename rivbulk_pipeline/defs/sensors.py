"""The sensors: a complete inventory report becomes a partition and a run; the automation
conditions are evaluated; the history's change stream is kept beyond its 24 hours."""

from datetime import datetime, timezone

import dagster as dg

from ..core.errors import ObjectNotFound
from ..core.inventory.reports import SensorCursor, scan_for_new_reports
from ..resources.history import ImportHistoryResource
from ..resources.object_store import ObjectStoreResource
from ..settings import Settings
from .alerts import transient_backlog_within_threshold
from .inventory_freshness import inventory_is_fresh
from .jobs import bulk_load_job
from .partitions import inventory_dates
from .summary import import_summary


@dg.sensor(
    job=bulk_load_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition for each complete S3 Inventory report (manifest.checksum present) "
    "and requests one run per new report. On its first tick it loads only the newest report; "
    "older dates are there to backfill.",
)
def inventory_report_sensor(
    context: dg.SensorEvaluationContext, settings: Settings, store: ObjectStoreResource
) -> dg.SensorResult:
    cursor = SensorCursor.parse(context.cursor)
    first_tick = not context.cursor
    try:
        scan = scan_for_new_reports(store, settings.inventory_bucket, settings.report_root, cursor)
    except ObjectNotFound:
        if settings.deployment != "local":
            raise  # a production bucket that is not there is a fault the operator must see
        # The local default before any data exists (plain `dagster dev` in a fresh clone): say what to do.
        return dg.SensorResult(
            skip_reason=f"no inventory reports in {settings.local_store_root / settings.inventory_bucket}: "
            "run `rivbulk demo` for the demo data, or `rivbulk inventory` to list your own image bucket"
        )
    known = set(context.instance.get_dynamic_partitions(inventory_dates.name))
    new_dates = sorted({folder.inventory_date for folder in scan.complete} - known)
    # One run per date, for its newest report: a run loads its date's newest complete report
    # anyway, and two runs of one partition launched together would race on the same tables.
    newest_per_date = {folder.inventory_date: folder for folder in scan.complete}  # oldest first: newest wins
    to_run = sorted(newest_per_date.values())
    if first_tick:
        to_run = to_run[-1:]
    if scan.cursor.pending:
        context.log.info(f"reports not complete yet: {', '.join(scan.cursor.pending)}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=folder.name, partition_key=folder.inventory_date, tags={"rivbulk/report": folder.name}
            )
            for folder in to_run
        ],
        dynamic_partitions_requests=[inventory_dates.build_add_request(new_dates)] if new_dates else [],
        cursor=scan.cursor.dump(),
    )


# Evaluates the automation conditions (the summary after every load, the hourly inventory
# freshness and backlog checks); on by default, like the report sensor.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "rivbulk_automation_sensor",
    target=dg.AssetSelection.assets(import_summary)
    | dg.AssetSelection.checks(inventory_is_fresh, transient_backlog_within_threshold),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)


@dg.sensor(
    name="rivbulk_history_change_log",
    minimum_interval_seconds=3600,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Copies the DynamoDB history's change stream (kept 24 hours) into its lasting log, so "
    "that a daily load can take the previous date's final outcomes as they are and ask the history "
    "only about what changed. Requests no runs; a failed tick means the shortcut is off until it works.",
)
def history_change_log_sensor(history: ImportHistoryResource) -> dg.SkipReason:
    copied = history.keep_change_log()
    if copied is None:
        return dg.SkipReason("this import history writes its change log with its records: nothing to copy")
    since = datetime.fromtimestamp(copied.covered_from, timezone.utc).isoformat(timespec="seconds")
    restarted = " (the stream had lost records since the last copy: the log starts again)" if copied.gap_found else ""
    return dg.SkipReason(f"copied {copied.keys} changed keys; the log covers every change since {since}{restarted}")
