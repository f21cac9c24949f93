"""Issue 18's "done when", one scenario run on both deployments (test_corrections_e2e.py).

Date 1 loads. Then, as an operator would: two registrations lost and their history rows and
Indexed tags deleted by hand; a dry run, then a retry of `UserAlreadyExists` after the registry's
team freed the face; a user declared lost. Date 2 qualifies, a properties file vanishes before
indexing (a transient failure), comes back, and date 2 reruns: everyone is registered again,
every correction is in the history and the summary, `rivbulk where` tells the story, and the
failed run and the breached thresholds reached moto's SNS.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any, Callable

import boto3
import dagster as dg

from rivbulk_pipeline.cli import main
from rivbulk_pipeline.core.model import HistoryStatus, ObjectRef
from rivbulk_pipeline.defs.alerts import run_failure_alert
from rivbulk_pipeline.settings import Settings

BY_HAND = ["alice/portrait.png", "bob/Photo.JPG"]  # registrations lost, rows and tags deleted by hand
RETRIED = "trudy/stolen.png"  # UserAlreadyExists: victor holds trudy's face
LOST_USER, LOST_KEY = "carol", "carol/face.jpeg"  # declared lost; its properties vanish at indexing once


@dataclass
class Deployment:
    settings: Settings
    defs: dg.Definitions
    instance: dg.DagsterInstance
    endpoint: str  # moto server (SNS, SQS; S3 and DynamoDB for aws)
    delete_history_row: Callable[[str], None]  # key -> the row gone, by hand
    forget_user: Callable[[str], None]  # the registry loses / frees a user
    registered: Callable[[str], bool]  # is this user in the registry
    remove_properties: Callable[[str], bytes]  # key of a properties file -> its old bytes
    restore_properties: Callable[[str, bytes], None]

    @property
    def resources(self) -> dict[str, Any]:
        return self.defs.resources  # type: ignore[return-value]


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def _history_rows(history) -> dict[str, tuple]:
    return {str(r.ref): (r.status.value, r.etag, r.reason, r.corrected_at) for r in history.scan()}


def _messages(d: "Deployment", queue_url: str) -> list[dict]:
    sqs = boto3.client("sqs", endpoint_url=d.endpoint, region_name=d.settings.region)
    found = []
    while True:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            return found
        for message in batch:
            found.append(json.loads(json.loads(message["Body"])["Message"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def alert_queue(endpoint: str, region: str) -> tuple[str, str]:
    """An SNS topic with an SQS queue subscribed (to read what was published): (topic ARN, queue URL)."""
    sns = boto3.client("sns", endpoint_url=endpoint, region_name=region)
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=region)
    topic = sns.create_topic(Name="rivbulk-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="rivbulk-alerts")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return topic, queue


def run_scenario(d: Deployment, date1: str, date2: str, queue_url: str) -> None:
    settings, instance = d.settings, d.instance
    store, history = d.resources["store"], d.resources["history"]
    job = d.defs.resolve_job_def("bulk_load_job")
    assets_job = d.defs.resolve_implicit_global_asset_job_def()
    bucket = settings.image_bucket

    def indexed_tag(key: str) -> bool:
        return store.get_tags(bucket, key).get("Indexed") == "True"

    def status(key: str) -> str:
        (record,) = history.records_of(f"s3://{bucket}/{key}")
        return record.status.value

    # ---- date 1 ----
    first = job.execute_in_process(partition_key=date1, instance=instance)
    assert first.success
    assert [status(k) for k in BY_HAND] == ["indexed", "indexed"] and status(LOST_KEY) == "indexed", history.records_of(
        f"s3://{bucket}/{LOST_KEY}"
    )
    assert status(RETRIED) == "failed_permanent"
    checks = {e.check_name: e for e in first.get_asset_check_evaluations()}
    breached = checks["indexed_users_permanent_failures_within_threshold"]
    assert not breached.passed and breached.severity == dg.AssetCheckSeverity.WARN  # 5 > threshold 2
    alerts = _messages(d, queue_url)
    assert [a["alert"] for a in alerts] == ["permanent failures above threshold"]
    assert alerts[0]["failed_permanent"] == 5 and alerts[0]["by_reason"]["UserAlreadyExists"] == 1
    assert "trudy" not in json.dumps(alerts) and "victor" not in json.dumps(alerts)  # codes and counts only

    # ---- by hand: the registry lost alice and bob; their history rows and tags deleted ----
    for key, user in zip(BY_HAND, ["alice", "bob"]):
        d.forget_user(user)
        d.delete_history_row(key)
        store.put_tags(bucket, key, {k: v for k, v in store.get_tags(bucket, key).items() if k != "Indexed"})

    # ---- retry by reason: a dry run changes nothing ----
    before = _history_rows(history)
    code, out = _cli("retry", "--reason", "UserAlreadyExists")
    assert code == 0 and json.loads(out)["chosen"] == 1
    assert json.loads(out)["by_status_and_reason"] == {"failed_permanent/UserAlreadyExists": 1}
    assert _history_rows(history) == before
    # ... and from the UI: the job's dry run counts the date's failures, changes nothing
    ui = d.defs.resolve_job_def("correct_history_job").execute_in_process(
        instance=instance,
        run_config={"ops": {"correct_history": {"config": {"action": "retry", "dates": [date1], "dry_run": True}}}},
    )
    assert ui.success and ui.output_for_node("correct_history") == {
        "failed_permanent/UserAlreadyExists": 1,
        "failed_permanent/apostrophe_in_request": 1,
        "failed_permanent/corrupt_image": 1,
        "failed_permanent/too_small": 1,
        "failed_permanent/unsupported_format": 1,
    }
    assert _history_rows(history) == before
    # the registry's team frees trudy's face; the retry for real
    d.forget_user("victor")
    code, out = _cli(
        "retry",
        "--reason",
        "UserAlreadyExists",
        "--apply",
        "--why",
        "face freed by the registry team",
        "--by",
        "ops-anna",
    )
    assert code == 0 and json.loads(out)["reopened"] == 1
    assert status(RETRIED) == HistoryStatus.REOPENED.value

    # ---- lost: carol, by user id ----
    d.forget_user(LOST_USER)
    code, out = _cli(
        "lost", "--user", LOST_USER, "--apply", "--why", "registry restored from an older backup", "--by", "ops-anna"
    )
    assert code == 0 and json.loads(out)["reopened"] == 1 and json.loads(out)["tags_removed"] == 1
    assert not indexed_tag(LOST_KEY) and status(LOST_KEY) == HistoryStatus.REOPENED.value

    # ---- date 2: qualify, then carol's properties vanish before indexing ----
    upto_qualified = [dg.AssetKey(a) for a in ("inventory_report", "batch_manifest", "qualified_objects")]
    assert assets_job.execute_in_process(partition_key=date2, instance=instance, asset_selection=upto_qualified).success
    properties = d.remove_properties(f"properties/{LOST_USER}.json")
    assert assets_job.execute_in_process(
        partition_key=date2, instance=instance, asset_selection=[dg.AssetKey("indexed_users")]
    ).success
    assert status(LOST_KEY) == HistoryStatus.FAILED_TRANSIENT.value  # not failed_permanent: the next run asks again
    for key in [*BY_HAND, RETRIED]:
        assert status(key) == "indexed" and indexed_tag(key), key  # decided from the history and the tags
    d.restore_properties(f"properties/{LOST_USER}.json", properties)

    # ---- a failed run is told: the correction job without a reason to give ----
    failed = d.defs.resolve_job_def("correct_history_job").execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={
            "ops": {"correct_history": {"config": {"action": "retry", "reasons": ["too_small"], "dry_run": False}}}
        },
    )
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    run_failure_alert(dg.build_run_status_sensor_context(
        sensor_name="rivbulk_run_failure_alert", dagster_event=failure, dagster_instance=instance,
        dagster_run=failed.dagster_run, resources={"settings": settings},
    ).for_run_failure())  # fmt: skip
    alerts = _messages(d, queue_url)
    assert [a["alert"] for a in alerts] == ["run failed"], alerts
    assert alerts[0]["run_id"] == failed.run_id and alerts[0]["failed_steps"] == {"correct_history": "CorrectionError"}

    # ---- date 2 again: carol is registered; everyone is back ----
    again = job.execute_in_process(partition_key=date2, instance=instance)
    assert again.success
    for key, user in [*zip(BY_HAND, ["alice", "bob"]), (RETRIED, "trudy"), (LOST_KEY, LOST_USER)]:
        assert status(key) == "indexed" and indexed_tag(key) and d.registered(user), key

    # ---- every correction in the history and the summary ----
    (retried,) = history.records_of(f"s3://{bucket}/{RETRIED}")
    assert (retried.correction, retried.corrected_by, retried.correction_why) == (
        "retry",
        "ops-anna",
        "face freed by the registry team",
    )
    summary = assets_job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("import_summary")])
    metadata = summary.asset_materializations_for_node("import_summary")[0].metadata
    rows = {r.data["correction"]: r.data for r in metadata["corrections"].value.records}
    assert (
        rows["retry"]["objects"] == 1
        and rows["retry"]["registered_since"] == 1
        and rows["retry"]["corrected_by"] == "ops-anna"
    )
    assert rows["lost"]["objects"] == 1 and rows["lost"]["why"] == "registry restored from an older backup"

    # ---- where is trudy? ----
    code, out = _cli("where", RETRIED)
    assert code == 0
    assert "status indexed" in out and "corrected (retry)" in out and "ops-anna" in out
    assert f"{date1}  index    failed_permanent  UserAlreadyExists" in out, out
    assert f"{date2}  qualify  not_qualified     already_indexed" in out, out  # date 2 reran after registering it
    code, out = _cli("where", LOST_USER)  # by user id
    assert code == 0 and LOST_KEY in out and "corrected (lost)" in out


def check_backlog_alert(d: Deployment, queue_url: str) -> None:
    """A transient failure waiting longer than the threshold: a WARN check and an SNS alert."""
    from rivbulk_pipeline.defs.alerts import backlog_result

    result = backlog_result(d.settings, {"transient_backlog": 3, "oldest_unresolved_failure_age_hours": 50.0}, 0.0, 0.0)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    alerts = _messages(d, queue_url)
    assert alerts == [
        {
            "alert": "transient backlog older than threshold",
            "oldest_age_hours": 50.0,
            "threshold_hours": d.settings.alert_transient_backlog_hours,
            "transient_backlog": 3,
        }
    ]


__all__ = ["Deployment", "ObjectRef", "alert_queue", "check_backlog_alert", "run_scenario"]
