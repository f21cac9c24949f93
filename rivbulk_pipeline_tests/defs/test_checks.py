"""The asset checks read back what was stored, and fail when it is wrong."""

from __future__ import annotations

import sqlite3

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rivbulk_pipeline.core.steps.tables import table_location
from rivbulk_pipeline.defs.assets import bulk_load_assets
from rivbulk_pipeline.defs.checks import (
    bulk_load_checks,
    indexed_users_carry_the_indexed_tag,
    indexed_users_match_the_import_history,
    indexed_users_one_outcome_per_qualified_object,
)
from rivbulk_pipeline.resources.deployment import build_resources
from rivbulk_pipeline.resources.object_store import LocalObjectStore

DATE = "2026-11-22"


class DoublingStore(LocalObjectStore):
    """A store with a bug: it writes every qualified_objects table with its rows twice."""

    def upload_file(self, bucket: str, key: str, path: str) -> str:
        if key.endswith("qualified_objects.parquet"):
            table = pq.read_table(path)
            pq.write_table(pa.concat_tables([table, table]), path)
        return super().upload_file(bucket, key, path)


@pytest.fixture
def loaded(demo, instance):
    """The demo date loaded, every check passing: the tests then break what was stored."""
    settings = demo.settings
    resources = build_resources(settings)
    result = dg.materialize(
        [*bulk_load_assets, *bulk_load_checks], partition_key=DATE, resources=resources, instance=instance
    )
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    return settings, instance, resources


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _run_checks(resources: dict, instance: dg.DagsterInstance, *checks) -> dict[str, dg.AssetCheckEvaluation]:
    checks_only = dg.define_asset_job("checks_only", selection=dg.AssetSelection.checks(*checks))
    defs = dg.Definitions(
        assets=bulk_load_assets, asset_checks=bulk_load_checks, jobs=[checks_only], resources=resources
    )
    # A run of checks alone, for one date (execute_in_process refuses partition_key without an asset).
    result = defs.resolve_job_def("checks_only").execute_in_process(
        tags={"dagster/partition": DATE}, instance=instance, raise_on_error=False
    )
    return _evaluations(result)


def test_doubled_decisions_fail_the_blocking_check_and_nobody_is_registered(demo, instance):
    settings = demo.settings
    resources = build_resources(settings)
    resources["store"] = DoublingStore(root=resources["store"].root)
    resources["registration"] = resources["registration"].model_copy(update={"store": resources["store"]})
    calls_before = resources["gateway"].register_calls()  # the demo's preregistered users
    result = dg.materialize(
        [*bulk_load_assets, *bulk_load_checks],
        partition_key=DATE,
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    check = _evaluations(result)["qualified_objects_one_decision_per_candidate"]
    assert not check.passed and check.metadata["doubled_count"].value == 22
    assert check.metadata["partition"].value == DATE
    assert not result.asset_materializations_for_node("indexed_users")  # blocked
    assert resources["gateway"].register_calls() == calls_before


def test_a_lost_history_record_and_a_lost_tag_fail_their_checks(loaded):
    settings, instance, resources = loaded
    store = resources["store"]
    with sqlite3.connect(settings.home_path / "import_history.sqlite") as db:
        db.execute(
            "DELETE FROM import_history WHERE object_uri = ?", (f"s3://{settings.image_bucket}/alice/portrait.png",)
        )
    tags = store.get_tags(settings.image_bucket, "carol/face.jpeg")
    store.put_tags(settings.image_bucket, "carol/face.jpeg", {k: v for k, v in tags.items() if k != "Indexed"})

    checks = _run_checks(
        resources, instance, indexed_users_match_the_import_history, indexed_users_carry_the_indexed_tag
    )
    history_check = checks["indexed_users_match_the_import_history"]
    assert not history_check.passed and history_check.metadata["not_in_history_examples"].value == [
        "alice/portrait.png"
    ]
    tag_check = checks["indexed_users_carry_the_indexed_tag"]
    assert not tag_check.passed and tag_check.metadata["untagged_examples"].value == ["carol/face.jpeg"]


def test_a_doubled_a_lost_and_an_unasked_outcome_fail_the_outcome_check(loaded):
    settings, instance, resources = loaded
    location = table_location(settings.output_bucket_name, settings.output_prefix, "indexed_users", DATE)
    path = resources["store"].root + "/" + location.bucket + "/" + location.key
    outcomes = pq.read_table(path).sort_by("key")
    lost, doubled = outcomes["key"][0].as_py(), outcomes["key"][1].as_py()
    unasked = outcomes.slice(1, 1).set_column(1, "key", pa.array(["zed/never-qualified.png"]))
    pq.write_table(pa.concat_tables([outcomes.slice(1), outcomes.slice(1, 1), unasked]), path)

    check = _run_checks(resources, instance, indexed_users_one_outcome_per_qualified_object)[
        "indexed_users_one_outcome_per_qualified_object"
    ]
    assert not check.passed
    assert check.metadata["doubled_examples"].value == [doubled]
    assert check.metadata["without_outcome_examples"].value == [lost]
    assert check.metadata["not_qualified_examples"].value == ["zed/never-qualified.png"]
    assert check.metadata["outcomes"].value == outcomes.num_rows + 1
