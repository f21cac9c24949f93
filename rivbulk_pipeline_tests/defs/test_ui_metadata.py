"""What an operator sees in the Dagster UI, over the demo data: failed rows and their reasons,
the summary across dates, every table as a DataFrame, locations, the stale-inventory warning,
and nothing personal anywhere in Dagster's storage."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rivbulk_pipeline.cli.demo import DEMO_CASES
from rivbulk_pipeline.core.model import (
    CANDIDATE_SCHEMA,
    INDEXED_SCHEMA,
    INVENTORY_SCHEMA,
    QUALIFIED_SCHEMA,
    HistoryRecord,
    HistoryStatus,
    ObjectRef,
)
from rivbulk_pipeline.defs.assets import bulk_load_assets, indexed_users
from rivbulk_pipeline.defs.inventory_freshness import inventory_age_result, inventory_is_fresh
from rivbulk_pipeline.defs.partitions import inventory_dates
from rivbulk_pipeline.defs.summary import import_summary
from rivbulk_pipeline.ui_metadata import FailedRows
from rivbulk_pipeline_tests.support.clock import NOW

NEWEST, OLDEST = "2026-11-22", "2026-11-19"
FIVE_REASONS = {"UserAlreadyExists", "apostrophe_in_request", "corrupt_image", "too_small", "unsupported_format"}
SCHEMAS = {
    "inventory_report": INVENTORY_SCHEMA,
    "batch_manifest": CANDIDATE_SCHEMA,
    "qualified_objects": QUALIFIED_SCHEMA,
    "indexed_users": INDEXED_SCHEMA,
}


def _defs(resources) -> dg.Definitions:
    return dg.Definitions(
        assets=[*bulk_load_assets, import_summary], asset_checks=[inventory_is_fresh], resources=resources
    )


def _load(instance, resources, partition: str) -> dg.ExecuteInProcessResult:
    result = dg.materialize(bulk_load_assets, partition_key=partition, resources=resources, instance=instance)
    assert result.success
    return result


def _summary(instance, resources) -> dg.ExecuteInProcessResult:
    result = dg.materialize([import_summary], resources=resources, instance=instance, selection=[import_summary])
    assert result.success
    return result


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return result.asset_materializations_for_node(asset)[0].metadata


def _stored(home: Path, settings, asset: str, partition: str) -> pd.DataFrame:
    return pq.read_table(
        home
        / "store"
        / settings.output_bucket_name
        / settings.output_prefix
        / asset
        / f"dt={partition}"
        / f"{asset}.parquet"
    ).to_pandas()


def test_failed_rows_and_counts_by_reason_for_a_date_with_failures(demo, instance):
    settings, home, resources, _ = demo
    result = _load(instance, resources, NEWEST)

    indexed = _metadata(result, "indexed_users")
    rows = [record.data for record in indexed["failed_rows"].value.records]
    assert {r["reason"] for r in rows} == FIVE_REASONS
    assert [r["reason"] for r in rows] == sorted(r["reason"] for r in rows)  # ordered by reason
    assert {r["outcome"] for r in rows} == {"failed_permanent"} and all(r["attempts"] >= 1 for r in rows)
    # the table agrees with what was stored, row for row
    stored = _stored(home, settings, "indexed_users", NEWEST)
    failed = stored[stored["outcome"] != "indexed"]
    assert sorted(r["key"] for r in rows) == sorted(failed["key"])
    assert {f"reason_{code}": 1 for code in FIVE_REASONS}.items() <= {k: v.value for k, v in indexed.items()}.items()
    assert indexed["outcome_indexed"].value == (stored["outcome"] == "indexed").sum() == 9
    assert [c.name for c in indexed["failed_rows"].value.schema.columns] == ["key", "outcome", "reason", "attempts"]
    # locations are the real files in local mode
    assert Path(indexed["table_location"].value).is_file()
    assert pq.read_table(indexed["table_location"].value).num_rows == len(stored)

    qualified = _metadata(result, "qualified_objects")
    not_qualified = {r.data["key"]: r.data["reason"] for r in qualified["failed_rows"].value.records}
    expected = {
        c.key: c.expect
        for c in DEMO_CASES
        if c.expect != "indexed" and not c.expect.startswith(("failed:", "not_candidate:"))
    }
    assert not_qualified == expected
    assert qualified["reason_qualified"].value == 14 and qualified["not_qualified"].value == len(expected)

    # the run log warns once per permanent failure, and its last lines count what they say
    logs = instance.all_logs(result.run_id)
    warnings = [e.user_message for e in logs if e.level == 30 and "permanent failure" in e.user_message]
    assert len(warnings) == 5 and {w.split(": ")[2].split(" ")[0] for w in warnings} == FIVE_REASONS
    assert any("registered 9 of 14 qualified: 5 failed_permanent" in e.user_message for e in logs)
    assert not any("registered: 13/13" in e.user_message for e in logs)


def test_every_table_asset_declares_its_column_schema():
    for asset in [*bulk_load_assets, import_summary]:
        spec = next(iter(asset.specs))
        schema = spec.metadata["dagster/column_schema"]
        assert [c.name for c in schema.columns], asset.key
        if asset.key.path[-1] in SCHEMAS:
            assert [c.name for c in schema.columns] == SCHEMAS[asset.key.path[-1]].names
        assert all(c.description for c in schema.columns), asset.key


def test_summary_across_dates_with_a_backfill_that_registered_nobody(demo, instance):
    settings, home, resources, dates = demo
    _load(instance, resources, NEWEST)
    backfill = _load(instance, resources, OLDEST)
    note = _metadata(backfill, "indexed_users")["note"].value
    assert note.startswith("nothing registered: ") and "already_indexed" in note
    # a transient failure waiting for the next run, three hours old
    history = resources["history"]
    waiting = ObjectRef(settings.image_bucket, "later/retry.png")
    assert history.claim(waiting, "e1", "run-x", 60)
    history.record(
        HistoryRecord(
            waiting,
            "e1",
            HistoryStatus.FAILED_TRANSIENT,
            reason="http_503",
            owner="run-x",
            updated_at=time.time() - 3 * 3600,
        )
    )

    result = _summary(instance, resources)
    metadata = _metadata(result, "import_summary")
    frame = _defs(resources).load_asset_value("import_summary", instance=instance)  # the stored table
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["inventory_date"]) == dates
    by_date = frame.set_index("inventory_date")
    assert by_date.loc[NEWEST, "indexed"] == 9 and by_date.loc[NEWEST, "failed_permanent"] == 5
    assert by_date.loc[NEWEST, "registered_to_date"] == 9
    assert by_date.loc[OLDEST, "indexed"] == 0 and by_date.loc[OLDEST, "note"] == note
    assert by_date.loc["2026-11-20", "note"] == "not loaded yet"
    # per-date counts agree with the stored tables
    stored = _stored(home, settings, "qualified_objects", OLDEST)
    assert by_date.loc[OLDEST, "candidates"] == len(stored)
    assert by_date.loc[OLDEST, "not_qualified"] == (~stored["qualified"]).sum()
    # the UI table and the numbers Dagster plots
    shown = [r.data for r in metadata["by_date"].value.records]
    assert [r["inventory_date"] for r in shown] == dates and shown[0]["note"] == note
    reasons = {
        (r.data["inventory_date"], r.data["reason"]): r.data["count"] for r in metadata["by_reason"].value.records
    }
    assert reasons[(OLDEST, "already_indexed")] == sum(c.expect == "indexed" and c.days_ago >= 3 for c in DEMO_CASES)
    assert reasons[(NEWEST, "too_small")] == 1
    registered = sum(r.status == HistoryStatus.INDEXED for r in history.scan())
    assert metadata["users_registered"].value == registered == 9
    assert metadata["transient_backlog"].value == 1
    assert 2.9 < metadata["oldest_unresolved_failure_age_hours"].value < 3.1
    assert metadata["dates_loaded"].value == 2 and metadata["dates_known"].value == 4


def test_every_asset_partition_loads_as_a_dataframe(demo, instance):
    settings, home, resources, _ = demo
    _load(instance, resources, NEWEST)
    defs = _defs(resources)
    for asset, schema in SCHEMAS.items():
        frame = defs.load_asset_value(asset, partition_key=NEWEST, instance=instance)
        assert isinstance(frame, pd.DataFrame), asset
        assert list(frame.columns) == schema.names, asset
        assert frame.equals(_stored(home, settings, asset, NEWEST)), asset

    @dg.asset(partitions_def=inventory_dates)
    def failures_by_folder(indexed_users: pd.DataFrame) -> dg.MaterializeResult:
        """A user's own asset downstream of indexed_users, as the README shows."""
        failed = indexed_users[indexed_users["outcome"] != "indexed"]
        return dg.MaterializeResult(metadata={"folders": len(set(failed["key"].str.split("/").str[0]))})

    result = dg.materialize(
        [failures_by_folder, indexed_users.to_source_asset()],
        partition_key=NEWEST,
        resources=resources,
        instance=instance,
        selection=[failures_by_folder],
    )
    assert result.asset_materializations_for_node("failures_by_folder")[0].metadata["folders"].value == 5


def test_a_stale_inventory_warns_with_the_age_of_the_newest_report(demo):
    settings, _, resources, _ = demo
    store = resources["store"]
    fresh = inventory_age_result(settings, store, now=NOW + timedelta(hours=1))
    assert fresh.passed and fresh.metadata["newest_report_age_hours"].value == pytest.approx(1 + 0.5 / 60, abs=0.02)

    stale = inventory_age_result(settings, store, now=NOW + timedelta(hours=50))
    assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN
    assert stale.metadata["newest_report_age_hours"].value == pytest.approx(50, abs=0.02)
    assert stale.metadata["max_age_hours"].value == 48
    assert "is 50.0 h old" in stale.description and "longer than 48 h" in stale.description

    # through Dagster, on the real clock: the demo's reports date from NOW, days ago
    result = dg.materialize(
        [*bulk_load_assets, inventory_is_fresh],
        resources=resources,
        selection=dg.AssetSelection.checks(inventory_is_fresh),
        instance=dg.DagsterInstance.ephemeral(),
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    expected_age = (datetime.now(timezone.utc) - NOW).total_seconds() / 3600
    assert evaluation.metadata["newest_report_age_hours"].value == pytest.approx(expected_age, abs=0.1)


def test_no_property_value_user_detail_or_image_byte_in_dagster_storage(demo, tmp_path):
    settings, home, resources, dates = demo
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        instance.add_dynamic_partitions(inventory_dates.name, dates)
        _load(instance, resources, NEWEST)
        _load(instance, resources, OLDEST)
        _summary(instance, resources)
        stored_metadata = repr(
            [
                record.event_log_entry
                for key in instance.get_asset_keys()
                for record in instance.fetch_materializations(key, limit=1000).records
            ]
        )
    assert "failed_rows" in stored_metadata and "by_date" in stored_metadata  # the tables are there
    blob = b"".join(p.read_bytes() for p in dagster_home.rglob("*") if p.is_file())
    for secret in (b"Alice", b"Blue", b"Carol", b"Judy"):  # property values in the demo
        assert secret not in blob
    # users named only in the details of failed registrations: the UI shows reason codes
    for user in ("mallory", "niaj", "oscar"):
        assert user.encode() not in blob
    assert b"\x89PNG" not in blob and b"\xff\xd8\xff" not in blob  # no image bytes


def test_failed_rows_keep_the_first_rows_by_reason_across_batches_and_count_them_all():
    failed = FailedRows(limit=3)
    for batch in (
        [("k1", "failed_transient", "http_503"), ("k2", "failed_permanent", "too_small: 40x40 px, user zed")],
        [("k3", "failed_permanent", "UserAlreadyExists: taken"), ("k0", "failed_permanent", "too_small: 10x10 px")],
        [("k4", "skipped", "claimed_elsewhere: claimed by another run")],
    ):
        keys, outcomes, reasons = (pa.array(list(column)) for column in zip(*batch))
        failed.add(keys, outcomes, reasons, pa.array([1] * len(batch)))
    metadata = failed.metadata()
    rows = [(r.data["reason"], r.data["key"]) for r in metadata["failed_rows"].value.records]
    assert rows == [("UserAlreadyExists", "k3"), ("claimed_elsewhere", "k4"), ("http_503", "k1")]
    assert failed.total == 5 and metadata["failed_rows_shown"].value == "first 3 of 5, by reason"
    assert metadata["reason_too_small"].value == 2 and metadata["reason_http_503"].value == 1
    assert "zed" not in repr(metadata)  # details stay in the stored table
