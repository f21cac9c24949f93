"""The real thing: `rivbulk dev` (dagster dev: webserver, daemon, code server) on 127.0.0.1,
driven only through the webserver's GraphQL API, as an operator's browser would.

The sensor must load the newest demo date by itself; a backfill of the two oldest dates must
then succeed without registering anybody again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from rivbulk_pipeline.cli.demo import DEMO_CASES, PREREGISTERED
from rivbulk_pipeline.core.inventory.reports import report_folders
from rivbulk_pipeline.resources.gateway import LocalRegistryGateway
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.settings import Settings
from rivbulk_pipeline_tests.support.dev_server import (
    POLL_SECONDS,
    DevServer,
    finished_backfill,
    finished_sensor_run,
    launch_backfill,
    sensor_runs,
)
from rivbulk_pipeline_tests.support.waiting import wait_for

TOTAL_SECONDS = 360  # well inside the pytest timeout: a failure still prints the log and stops the server
SENSOR_RUN_SECONDS = 240  # start-up, first tick (at once), one run of four steps


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def expected_new_users() -> set[str]:
    users = set()
    for case in DEMO_CASES:
        if case.expect == "indexed":
            users |= {value.lower() for key, value in case.tags.items() if key.lower() == "userid"}
    return users


@pytest.mark.timeout(420)
def test_rivbulk_dev_sensor_then_backfill_register_each_user_once(tmp_path: Path) -> None:
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    started = time.monotonic()
    deadline = started + TOTAL_SECONDS

    server = DevServer(home, dagster_home, tmp_path / "rivbulk-dev.log")
    try:
        info = wait_for(
            "the webserver's /server_info",
            lambda: requests.get(f"{server.url}/server_info", timeout=5).json() or None,
            deadline=deadline,
            interval=POLL_SECONDS,
            server=server,
        )
        assert "dagster_webserver_version" in info

        # demo data written by the CLI itself before it started dagster
        settings = Settings.from_env({"RIVBULK_HOME": str(home)})
        store = LocalObjectStore(root=str(home / "store"))
        folders = report_folders(store, settings.inventory_bucket, settings.report_root)
        dates = sorted({f.inventory_date for f in folders})
        assert len(dates) == 4, [f.name for f in folders]
        newest = folders[-1]

        runs = wait_for(
            f"the sensor's run for {newest.inventory_date} to succeed",
            lambda: finished_sensor_run(server),
            deadline=min(deadline, started + SENSOR_RUN_SECONDS),
            interval=POLL_SECONDS,
            server=server,
        )
        assert len(runs) == 1, runs  # the first tick loads the newest report only
        tags = _tags(runs[0])
        assert tags["dagster/partition"] == newest.inventory_date
        assert tags["dagster/run_key"] == newest.name

        registry = LocalRegistryGateway(db_path=str(home / "registry.sqlite"))
        users = registry.users()
        expected = expected_new_users()
        assert expected and {u["user_id"] for u in users} == expected | {user for user, _ in PREREGISTERED}
        assert len(users) == len({u["user_id"].lower() for u in users})
        # One face per image registered: a preregistered user's new image is their second face (as RIV stores it).
        preregistered = {user for user, _ in PREREGISTERED}
        assert all(
            u["registrations"] == 1 + (u["user_id"] in preregistered) for u in users if u["user_id"] in expected
        ), users
        calls_after_sensor = registry.register_calls()

        oldest_two = dates[:2]
        backfill_id = launch_backfill(server, oldest_two)
        backfill = wait_for(
            f"backfill {backfill_id} of {oldest_two}",
            lambda: finished_backfill(server, backfill_id),
            deadline=deadline,
            interval=POLL_SECONDS,
            server=server,
        )
        assert backfill["status"] == "COMPLETED_SUCCESS", backfill
        assert backfill["runs"] and all(r["status"] == "SUCCESS" for r in backfill["runs"]), backfill["runs"]
        assert {_tags(r)["dagster/partition"] for r in backfill["runs"]} == set(oldest_two)

        assert registry.users() == users  # nobody new, nobody re-registered
        assert registry.register_calls() == calls_after_sensor  # the import history knew them all
        assert len(sensor_runs(server)) == 1  # later ticks requested nothing
    except BaseException:
        print(f"---- rivbulk dev log (last lines of {server.log_path}) ----\n{server.log_tail()}")
        raise
    finally:
        server.stop()
        print(f"[{time.monotonic() - server.started:6.1f}s] rivbulk dev stopped")
