"""The sensor through Dagster's test APIs, over the demo data on the local store."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from typing import Any, Optional

import dagster as dg
import pytest

from rivbulk_pipeline.cli.demo import write_report
from rivbulk_pipeline.core.inventory.reports import report_folders
from rivbulk_pipeline.defs.jobs import bulk_load_job
from rivbulk_pipeline.defs.partitions import inventory_dates
from rivbulk_pipeline.defs.sensors import inventory_report_sensor
from rivbulk_pipeline.resources.deployment import build_resources

# Relative to the real clock: the sensor keeps an incomplete report pending for a week from now.
TODAY = datetime.now(timezone.utc).date()
NOW = datetime.combine(TODAY, time(12, 0), timezone.utc)


def day(offset: int) -> str:
    return (TODAY + timedelta(days=offset)).isoformat()


@pytest.fixture
def demo_now() -> datetime:
    """The demo's newest report is of today: the sensor judges reports by the real clock."""
    return NOW


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def demo(demo):
    """The demo's settings, and only the resources the sensor requires (the others would need
    the sensor context opened as a context manager)."""
    return demo.settings, {"settings": demo.resources["settings"], "store": demo.resources["store"]}


def tick(instance: dg.DagsterInstance, resources: dict[str, Any], cursor: Optional[str]) -> dg.SensorResult:
    """One evaluation; its partition requests applied to the instance, as the daemon would."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = inventory_report_sensor(context)
    assert isinstance(result, dg.SensorResult)
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        assert request.partitions_def_name == inventory_dates.name
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def added(result: dg.SensorResult) -> list[str]:
    return [key for request in result.dynamic_partitions_requests or [] for key in request.partition_keys]


def runs(result: dg.SensorResult) -> list[tuple[str, str]]:
    return [(r.partition_key, r.run_key) for r in result.run_requests or []]


def folder_name(created_at: datetime) -> str:
    return created_at.strftime("%Y-%m-%dT%H-%MZ")


def checksum_key(resources: dict[str, Any], created_at: datetime) -> str:
    return f"{resources['settings'].report_root}/{folder_name(created_at)}/manifest.checksum"


def test_sensor_is_running_by_default_and_targets_the_bulk_load_job():
    assert inventory_report_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert inventory_report_sensor.job_name == bulk_load_job.name
    assert inventory_report_sensor.minimum_interval_seconds == 30


def test_first_tick_adds_every_date_and_runs_only_the_newest_report(demo, instance):
    settings, resources = demo
    folders = report_folders(resources["store"], settings.inventory_bucket, resources["settings"].report_root)
    assert [f.inventory_date for f in folders] == [day(-3), day(-2), day(-1), day(0)]

    first = tick(instance, resources, None)
    assert added(first) == [day(-3), day(-2), day(-1), day(0)]
    assert runs(first) == [(day(0), folder_name(NOW))]
    assert first.run_requests[0].tags["rivbulk/report"] == folder_name(NOW)
    assert sorted(instance.get_dynamic_partitions(inventory_dates.name)) == [day(-3), day(-2), day(-1), day(0)]

    second = tick(instance, resources, first.cursor)
    assert runs(second) == [] and added(second) == []
    assert second.cursor == first.cursor


def test_a_report_delivered_later_gets_exactly_one_run_and_its_date(demo, instance):
    settings, resources = demo
    cursor = tick(instance, resources, None).cursor

    tomorrow = NOW + timedelta(hours=13)  # 01:00 the next day
    write_report(resources["store"], settings, tomorrow, "Parquet")
    result = tick(instance, resources, cursor)
    assert runs(result) == [(day(1), folder_name(tomorrow))]
    assert added(result) == [day(1)]
    assert day(1) in instance.get_dynamic_partitions(inventory_dates.name)

    after = tick(instance, resources, result.cursor)
    assert runs(after) == [] and added(after) == []

    # a second report for a date that already has a partition: a run, no new partition
    redelivered = tomorrow + timedelta(hours=6)
    write_report(resources["store"], settings, redelivered)
    again = tick(instance, resources, after.cursor)
    assert runs(again) == [(day(1), folder_name(redelivered))]
    assert added(again) == []


def test_an_incomplete_report_gets_no_run_until_it_is_complete(demo, instance):
    settings, resources = demo
    store = resources["store"]
    cursor = tick(instance, resources, None).cursor

    tomorrow = NOW + timedelta(hours=13)
    write_report(store, settings, tomorrow)
    bucket, key = settings.inventory_bucket, checksum_key(resources, tomorrow)
    checksum = store.get_bytes(bucket, key)
    store.delete(bucket, key)  # still being delivered

    for _ in range(2):  # tick after tick: nothing, and the date is not a partition yet
        result = tick(instance, resources, cursor)
        assert runs(result) == [] and added(result) == []
        cursor = result.cursor
    assert day(1) not in instance.get_dynamic_partitions(inventory_dates.name)

    store.put_bytes(bucket, key, checksum)
    complete = tick(instance, resources, cursor)
    assert runs(complete) == [(day(1), folder_name(tomorrow))]
    assert added(complete) == [day(1)]
    assert runs(tick(instance, resources, complete.cursor)) == []


def test_two_new_reports_of_one_date_in_one_tick_get_one_run_for_the_newer(demo, instance):
    settings, resources = demo
    cursor = tick(instance, resources, None).cursor

    early, late = NOW + timedelta(hours=13), NOW + timedelta(hours=20)
    write_report(resources["store"], settings, early)
    write_report(resources["store"], settings, late)
    result = tick(instance, resources, cursor)
    assert runs(result) == [(day(1), folder_name(late))]
    assert added(result) == [day(1)]
    assert runs(tick(instance, resources, result.cursor)) == []


def test_before_any_demo_data_the_sensor_skips_saying_what_to_run(local_settings, instance) -> None:
    """Plain `dagster dev` in a fresh clone: no store yet. A skip that names the command, not an
    error on every tick; the cursor stays empty, so the first real tick still loads only the newest."""
    resources = build_resources(local_settings)
    context = dg.build_sensor_context(
        instance=instance, resources={"settings": resources["settings"], "store": resources["store"]}
    )
    result = inventory_report_sensor(context)
    assert isinstance(result, dg.SensorResult)
    assert not result.run_requests and not result.dynamic_partitions_requests and result.cursor is None
    assert result.skip_reason is not None
    message = result.skip_reason.skip_message
    assert "rivbulk demo" in message and str(local_settings.local_store_root) in message


def test_a_missing_bucket_in_production_is_still_an_error(aws_env, monkeypatch, instance) -> None:
    from moto import mock_aws

    from rivbulk_pipeline.core.errors import ObjectNotFound
    from rivbulk_pipeline.settings import Settings

    for name, value in {
        "RIVBULK_DEPLOYMENT": "aws",
        "RIVBULK_REGION": "us-east-1",
        "RIVBULK_IMAGE_BUCKET": "images",
        "RIVBULK_INVENTORY_BUCKET": "no-such-inventory",
        "RIVBULK_OUTPUT_BUCKET": "out",
        "RIVBULK_GATEWAY_URL": "http://127.0.0.1:9",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        resources = build_resources(Settings.from_env())
        with dg.build_sensor_context(
            instance=instance, resources={"settings": resources["settings"], "store": resources["store"]}
        ) as context:
            with pytest.raises(ObjectNotFound):
                inventory_report_sensor(context)
