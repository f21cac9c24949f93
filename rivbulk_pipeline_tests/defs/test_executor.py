"""The job runs its steps in process, and the riv_gateway pool still holds indexing back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dagster as dg

from rivbulk_pipeline.cli.demo import create_demo
from rivbulk_pipeline.core.inventory.reports import report_folders
from rivbulk_pipeline.defs.pools import GATEWAY_POOL
from rivbulk_pipeline.resources.deployment import build_resources


def bulk_load_job() -> dg.JobDefinition:
    from rivbulk_pipeline.definitions import defs

    return defs.resolve_job_def("bulk_load_job")


def _indexing_events(instance: dg.DagsterInstance) -> list[tuple[str, str]]:
    runs = instance.get_runs()
    if not runs:
        return []
    return [
        (entry.dagster_event.event_type_value, entry.user_message or "")
        for entry in instance.all_logs(runs[0].run_id)
        if entry.dagster_event and entry.dagster_event.step_key == "indexed_users"
    ]


def test_the_in_process_executor_waits_for_a_gateway_pool_slot(local_settings, tmp_path: Path) -> None:
    assert isinstance(bulk_load_job().executor_def, dg.ExecutorDefinition)
    assert bulk_load_job().executor_def.name == "in_process"
    create_demo(local_settings)
    resources = build_resources(local_settings)
    dates = sorted(
        {
            f.inventory_date
            for f in report_folders(resources["store"], local_settings.inventory_bucket, local_settings.report_root)
        }
    )
    instance = dg.DagsterInstance.local_temp(tempdir=str(tmp_path))
    instance.add_dynamic_partitions("inventory_dates", [str(d) for d in dates])
    instance.event_log_storage.set_concurrency_slots(GATEWAY_POOL, 1)
    # Another run holds the deployment's only gateway slot.
    instance.event_log_storage.claim_concurrency_slot(GATEWAY_POOL, "another-run", "indexed_users")
    outcome: dict = {}

    def run() -> None:
        with dg.execute_job(
            dg.reconstructable(bulk_load_job), instance, tags={"dagster/partition": str(dates[-1])}
        ) as result:
            outcome["success"] = result.success

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 120
    while not any("blocked by limit for pool" in message for _, message in _indexing_events(instance)):
        assert time.monotonic() < deadline, _indexing_events(instance)
        time.sleep(0.5)
    time.sleep(2)
    assert "STEP_START" not in [kind for kind, _ in _indexing_events(instance)]  # still waiting
    instance.event_log_storage.free_concurrency_slots_for_run("another-run")
    runner.join(180)
    assert outcome == {"success": True}
    assert "STEP_SUCCESS" in [kind for kind, _ in _indexing_events(instance)]
