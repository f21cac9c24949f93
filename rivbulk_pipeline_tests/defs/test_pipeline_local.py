"""The four assets end to end on the local default, through Dagster's `materialize`."""

from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq

from rivbulk_pipeline.cli.demo import DEMO_CASES
from rivbulk_pipeline.core.inventory.reports import report_folders
from rivbulk_pipeline.core.model import Outcome
from rivbulk_pipeline.defs.assets import bulk_load_assets
from rivbulk_pipeline.defs.checks import bulk_load_checks
from rivbulk_pipeline.defs.partitions import inventory_dates


def _table(home, settings, asset: str, partition: str) -> list[dict]:
    path = (
        home
        / "store"
        / settings.output_bucket_name
        / settings.output_prefix
        / asset
        / f"dt={partition}"
        / f"{asset}.parquet"
    )
    return pq.read_table(path).to_pylist()


def _load(instance, resources, partition: str, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*bulk_load_assets, *bulk_load_checks],
        partition_key=partition,
        resources=resources,
        instance=instance,
        **kwargs,
    )


def test_demo_writes_reports_for_three_past_dates_and_today(demo):
    settings, home, resources, _ = demo
    folders = report_folders(resources["store"], settings.inventory_bucket, resources["settings"].report_root)
    assert [f.inventory_date for f in folders] == ["2026-11-19", "2026-11-20", "2026-11-21", "2026-11-22"]


def test_every_demo_object_ends_with_the_outcome_its_case_calls_for(demo, instance):
    settings, home, resources, _ = demo
    result = _load(instance, resources, "2026-11-22")
    assert result.success

    inventory = {r["key"] for r in _table(home, settings, "inventory_report", "2026-11-22")}
    assert inventory == {case.key for case in DEMO_CASES}  # odd keys decoded exactly
    candidates = {r["key"] for r in _table(home, settings, "batch_manifest", "2026-11-22")}
    qualified = {r["key"]: r for r in _table(home, settings, "qualified_objects", "2026-11-22")}
    indexed = {r["key"]: r for r in _table(home, settings, "indexed_users", "2026-11-22")}

    for case in DEMO_CASES:
        if case.expect.startswith("not_candidate:"):
            assert case.key not in candidates, case.key
        elif case.expect == "indexed":
            assert qualified[case.key]["qualified"], (case.key, qualified[case.key]["detail"])
            assert indexed[case.key]["outcome"] == Outcome.INDEXED.value, (case.key, indexed[case.key]["reason"])
            assert resources["store"].get_tags(settings.image_bucket, case.key).get("Indexed") == "True"
        elif case.expect.startswith("failed:"):
            assert indexed[case.key]["outcome"] == Outcome.FAILED_PERMANENT.value, case.key
            assert case.expect.split(":", 1)[1] in indexed[case.key]["reason"], (case.key, indexed[case.key]["reason"])
            assert "Indexed" not in resources["store"].get_tags(settings.image_bucket, case.key)
        else:
            row = qualified[case.key]
            assert (row["qualified"], row["reason"]) == (False, case.expect), (case.key, row)
            assert case.key in row["detail"], row["detail"]  # the reason names the object
            assert case.key not in indexed

    registry = resources["gateway"]
    users = {u["user_id"] for u in registry.users()}
    expected_new = {
        (c.tags.get("UserId") or c.tags.get("userid") or c.tags.get("USERID")).lower()
        for c in DEMO_CASES
        if c.expect == "indexed"
    }
    assert expected_new <= users
    metadata = result.asset_materializations_for_node("indexed_users")[0].metadata
    assert metadata["outcome_indexed"].value == len(expected_new)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {check.check_key.name: True for c in bulk_load_checks for check in [c]}
    assert {e.partition for e in result.get_asset_check_evaluations()} == {"2026-11-22"}


def test_rerun_and_backfill_register_nobody_twice(demo, instance):
    settings, home, resources, _ = demo
    assert _load(instance, resources, "2026-11-22").success
    registry = resources["gateway"]
    calls_after_first = registry.register_calls()
    users_after_first = registry.users()

    assert _load(instance, resources, "2026-11-22").success  # rerun
    for partition in ("2026-11-19", "2026-11-21"):  # backfill older dates
        assert _load(instance, resources, partition).success

    assert registry.users() == users_after_first
    assert registry.register_calls() == calls_after_first  # no call at all: the history knew
    rerun = _table(home, settings, "qualified_objects", "2026-11-22")
    assert not any(r["qualified"] for r in rerun)
    assert sum(r["reason"] == "already_indexed" for r in rerun) == sum(c.expect == "indexed" for c in DEMO_CASES)


def test_no_property_values_or_image_bytes_in_dagster_storage(demo, tmp_path):
    settings, home, resources, _ = demo
    instance_home = tmp_path / "dagster_home"
    instance_home.mkdir()
    with dg.instance_for_test(temp_dir=str(instance_home)) as instance:
        instance.add_dynamic_partitions(inventory_dates.name, ["2026-11-22"])
        assert _load(instance, resources, "2026-11-22").success
    blob = b"".join(p.read_bytes() for p in instance_home.rglob("*") if p.is_file())
    for secret in (b"Alice", b"Blue", b"Carol", b"Judy"):  # property values in the demo
        assert secret not in blob
    assert b"\x89PNG" not in blob and b"\xff\xd8\xff" not in blob  # no image bytes
