"""A run killed with SIGKILL mid-indexing, then rerun: each remaining user registered exactly
once, no outcome lost. The run is a real Dagster run in a child process on a persistent instance."""

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from rivbulk_pipeline.cli.demo import face_image, write_report
from rivbulk_pipeline.core.model import HistoryStatus
from rivbulk_pipeline.defs.assets import bulk_load_assets
from rivbulk_pipeline.defs.partitions import inventory_dates
from rivbulk_pipeline.resources.deployment import build_resources
from rivbulk_pipeline.settings import Settings

USERS = 60


@pytest.mark.timeout(240)
def test_sigkill_mid_indexing_then_rerun(local_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("RIVBULK_INDEX_RATE", "12")
    monkeypatch.setenv("RIVBULK_INDEX_CONCURRENCY", "4")
    monkeypatch.setenv("RIVBULK_CLAIM_LEASE_SECONDS", "3")
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    settings = Settings.from_env()
    resources = build_resources(settings)
    store, history, registry = resources["store"], resources["history"], resources["gateway"]

    for n in range(USERS):
        key = f"people/user-{n:03d}.png"
        store.put_bytes(settings.image_bucket, key, face_image(1000 + n))
        store.put_tags(settings.image_bucket, key, {"UserId": f"user-{n:03d}"})
    report_time = (datetime.now(timezone.utc) + timedelta(minutes=1)).replace(second=0, microsecond=0)
    write_report(store, settings, report_time)
    partition = report_time.date().isoformat()
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(inventory_dates.name, [partition])

    child = subprocess.Popen(
        [sys.executable, "-m", "rivbulk_pipeline_tests.support.resume_child", partition],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # Wait on the history, not the registry: a face is in the registry a moment before its row
        # says indexed, and the kill must land after 15 rows say so.
        while sum(r.status == HistoryStatus.INDEXED for r in history.scan()) < 15:
            assert child.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()

    at_kill = {r.ref.key: r for r in history.scan()}
    indexed_before = {k for k, r in at_kill.items() if r.status == HistoryStatus.INDEXED}
    claimed_at_kill = {k for k, r in at_kill.items() if r.status == HistoryStatus.CLAIMED}
    attempts_before = {u["user_id"]: u["attempts"] for u in registry.users()}
    calls_before = registry.register_calls()
    assert 15 <= len(indexed_before) < USERS, "the kill must land mid-indexing"

    with dg.DagsterInstance.get() as instance:
        (killed,) = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": partition}))
        assert killed.status == dg.DagsterRunStatus.STARTED  # nothing has said it died yet
        # While it shows as running, a rerun of its date stops at its first step (run_guard.py)...
        refused = dg.materialize(
            bulk_load_assets, partition_key=partition, resources=resources, instance=instance, raise_on_error=False
        )
        assert not refused.success and registry.register_calls() == calls_before
        # ...until it is marked failed, as run monitoring (or the operator, in the UI) does.
        instance.report_run_failed(killed)
        result = dg.materialize(bulk_load_assets, partition_key=partition, resources=resources, instance=instance)
    assert result.success

    final = {r.ref.key: r for r in history.scan()}
    assert len(final) == USERS and all(r.status == HistoryStatus.INDEXED for r in final.values())  # nothing lost
    users = {u["user_id"]: u for u in registry.users()}
    assert len(users) == USERS and all(u["registrations"] == 1 for u in users.values())
    for key in indexed_before:  # done before the kill: not called again
        user = key.split("/")[1].removesuffix(".png")
        assert users[user]["attempts"] == attempts_before[user], user
    untouched = set(final) - indexed_before - claimed_at_kill
    for key in untouched:  # never reached before the kill: exactly one call
        assert users[key.split("/")[1].removesuffix(".png")]["attempts"] == 1
    # Only what was in flight at the kill (at most the concurrency) may see a second, idempotent call.
    assert len(claimed_at_kill) <= 4
    assert registry.register_calls() - calls_before == len(untouched) + len(claimed_at_kill)
    for key in indexed_before | untouched:
        assert store.get_tags(settings.image_bucket, key).get("Indexed") == "True"
