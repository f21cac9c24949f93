"""Told, not found out: a failed run, too many permanent failures on a date, a transient backlog
waiting too long. Each shows in the UI (the sensor's ticks, WARN checks) and, when
RIVBULK_ALERT_SNS_TOPIC_ARN names a topic, is also published there.

An alert carries counts, reason codes, dates, run ids and error class names: never keys' contents,
user ids, properties or error messages (a message may quote a user's details).
"""

import collections
import json
import time
from typing import Any, Mapping

import dagster as dg
import pyarrow.compute as pc
from dagster._core.storage.tags import PARTITION_NAME_TAG

from ..core.model import Outcome
from ..core.steps.summary import reason_codes
from ..core.steps.tables import open_table
from ..resources.object_store import ObjectStoreResource
from ..settings import Settings
from .partitions import inventory_dates
from .summary import import_summary

HOURLY = (dg.AutomationCondition.cron_tick_passed("0 * * * *") & ~dg.AutomationCondition.in_progress()).with_label(
    "hourly"
)


def publish_alert(settings: Settings, subject: str, fields: Mapping[str, Any]) -> bool:
    """Publish one alert to the configured SNS topic; False when none is configured."""
    if not settings.alert_sns_topic_arn:
        return False
    from ..resources.deployment import aws_clients  # boto3 only when a topic is configured

    sns = aws_clients(settings).client("sns")
    sns.publish(
        TopicArn=settings.alert_sns_topic_arn,
        Subject=f"rivbulk: {subject}"[:100],  # SNS's limit for a subject
        Message=json.dumps({"alert": subject, **fields}, sort_keys=True, default=str),
    )
    return True


def run_failure_fields(context: dg.RunFailureSensorContext) -> dict[str, Any]:
    """What an alert says of a failed run: ids, the failed steps and their error classes."""
    run = context.dagster_run
    steps = {}
    for event in context.get_step_failure_events():
        error = getattr(event.event_specific_data, "error", None)
        while getattr(error, "cause", None) is not None:  # Dagster wraps the step's own error
            error = error.cause
        steps[event.step_key or "?"] = getattr(error, "cls_name", None) or "unknown"
    return {
        "job": run.job_name,
        "run_id": run.run_id,
        "partition": run.tags.get(PARTITION_NAME_TAG, ""),
        "failed_steps": steps,
    }


@dg.run_failure_sensor(
    name="rivbulk_run_failure_alert",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="A failed run is reported (this sensor's ticks in the UI; the SNS topic when one is set): "
    "the job, run id, partition and each failed step's error class.",
)
def run_failure_alert(context: dg.RunFailureSensorContext, settings: Settings) -> None:
    fields = run_failure_fields(context)
    sent = publish_alert(settings, "run failed", fields)
    context.log.warning(
        f"run {fields['run_id']} of {fields['job']} failed: {fields['failed_steps']} (sent to SNS: {sent})"
    )


@dg.asset_check(
    asset="indexed_users",
    partitions_def=inventory_dates,
    description=(
        "The date recorded at most RIVBULK_ALERT_PERMANENT_FAILURES permanent failures (warns, and alerts, otherwise)."
    ),
)
def indexed_users_permanent_failures_within_threshold(
    context: dg.AssetCheckExecutionContext, settings: Settings, store: ObjectStoreResource
) -> dg.AssetCheckResult:
    partition = context.partition_key
    location = settings.table_location("indexed_users", partition)
    by_code: collections.Counter = collections.Counter()
    with open_table(store, location) as table:
        for batch in table.iter_batches(columns=["outcome", "reason"]):
            failed = batch.filter(pc.equal(batch.column("outcome"), Outcome.FAILED_PERMANENT.value))
            for item in pc.value_counts(reason_codes(failed.column("reason"))).to_pylist():
                by_code[item["values"]] += item["counts"]
    count, limit = sum(by_code.values()), settings.alert_permanent_failures
    fields = {
        "partition": partition,
        "failed_permanent": count,
        "threshold": limit,
        "by_reason": dict(by_code.most_common(20)),
    }
    return _warning_check(
        settings,
        "permanent failures above threshold",
        count <= limit,
        f"{count} permanent failures on {partition} (threshold {limit})",
        fields,
    )


def backlog_result(
    settings: Settings, metadata: Mapping[str, Any], materialized_at: float, now: float
) -> dg.AssetCheckResult:
    """From import_summary's metadata: how long the oldest transient failure has waited by now."""
    backlog = int(metadata.get("transient_backlog", 0))
    age = float(metadata.get("oldest_unresolved_failure_age_hours", 0.0))
    age_now = round(age + max(0.0, now - materialized_at) / 3600, 2) if backlog else 0.0
    limit = settings.alert_transient_backlog_hours
    fields = {"transient_backlog": backlog, "oldest_age_hours": age_now, "threshold_hours": limit}
    return _warning_check(
        settings,
        "transient backlog older than threshold",
        age_now <= limit,
        f"{backlog} transient failures waiting; the oldest for {age_now:g} h (threshold {limit:g} h)",
        fields,
    )


def _warning_check(
    settings: Settings, alert: str, passed: bool, description: str, fields: Mapping[str, Any]
) -> dg.AssetCheckResult:
    """A WARN check's result, and the same figures published as `alert` when it did not pass."""
    if not passed:
        publish_alert(settings, alert, fields)
    metadata = {k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in fields.items()}
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.WARN, description=description, metadata=metadata
    )


@dg.asset_check(
    asset=import_summary,
    description="No transient failure has waited longer than RIVBULK_ALERT_TRANSIENT_BACKLOG_HOURS for a run "
    "(warns, and alerts, otherwise); runs with the summary and every hour.",
    automation_condition=HOURLY,
)
def transient_backlog_within_threshold(
    context: dg.AssetCheckExecutionContext, settings: Settings
) -> dg.AssetCheckResult:
    event = context.instance.get_latest_materialization_event(import_summary.key)
    if event is None or event.asset_materialization is None:
        return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN, description="no summary yet")
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    return backlog_result(settings, metadata, event.timestamp, time.time())


alert_checks = [indexed_users_permanent_failures_within_threshold, transient_backlog_within_threshold]
