"""The real thing: `rivbulk dev` (dagster dev: webserver, daemon, code server) on 127.0.0.1,
driven only through the webserver's GraphQL API, as an operator's browser would.

The sensor must load the newest demo date by itself; a backfill of the two oldest dates must
then succeed without registering anybody again.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import pytest
import requests

from rivbulk_pipeline.core.inventory.reports import report_folders
from rivbulk_pipeline.defs.assets import bulk_load_assets
from rivbulk_pipeline.cli.demo import DEMO_CASES, PREREGISTERED
from rivbulk_pipeline.resources.gateway import LocalRegistryGateway
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.settings import Settings

HOST = "127.0.0.1"
SENSOR = "inventory_report_sensor"
TOTAL_SECONDS = 360  # well inside the pytest timeout: a failure still prints the log and stops the server
SENSOR_RUN_SECONDS = 240  # start-up, first tick (at once), one run of four steps
POLL_SECONDS = 2.0
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
    ... on PythonError { message }
  }
}"""

LAUNCH_BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
  }
}"""

BACKFILL_QUERY = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status runs { runId status tags { key value } } error { message } }
    ... on PythonError { message }
  }
}"""

T = TypeVar("T")


class DevServer:
    """`rivbulk dev` in its own process group, its output in a log file."""

    def __init__(self, home: Path, dagster_home: Path, log_path: Path, extra_env: Optional[dict[str, str]] = None) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.started = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RIVBULK_")}
        env.update(
            RIVBULK_HOME=str(home),
            DAGSTER_HOME=str(dagster_home),
            RIVBULK_INDEX_RATE="50",
            DAGSTER_DISABLE_TELEMETRY="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra_env or {})
        script = Path(sys.executable).parent / "rivbulk"  # the console script, as a user runs it
        command = [str(script)] if script.exists() else [sys.executable, "-m", "rivbulk_pipeline.cli"]
        command += ["dev", "--host", HOST, "--port", str(self.port)]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=str(home.parent), env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def graphql(self, query: str, variables: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=20)
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), f"GraphQL errors: {body['errors']}"
        return body["data"]

    def log_tail(self, lines: int = 120) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Ask dagster dev to shut its services down, then kill whatever is left in the group
        (in a `finally`, so that even a pytest timeout landing here cannot skip the kill)."""
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGINT)  # dagster dev's own clean shutdown
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for(server: DevServer, what: str, check: Callable[[], Optional[T]], deadline: float) -> T:
    """Poll `check` until it returns a value; fail when the server dies or time runs out."""
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"rivbulk dev exited with code {server.proc.returncode} while waiting for {what}")
        try:
            value = check()
        except requests.RequestException:  # the webserver is not up yet, or restarting
            value = None
        if value is not None:
            print(f"[{time.monotonic() - server.started:6.1f}s] {what}: done")  # shown on failure
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(POLL_SECONDS)


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def sensor_runs(server: DevServer) -> list[dict[str, Any]]:
    data = server.graphql(RUNS_QUERY, {"filter": {"tags": [{"key": "dagster/sensor_name", "value": SENSOR}]}})
    runs = data["runsOrError"]
    assert runs["__typename"] == "Runs", runs
    return runs["results"]


def finished_sensor_run(server: DevServer) -> Optional[list[dict[str, Any]]]:
    runs = sensor_runs(server)
    failed = [r for r in runs if r["status"] in {"FAILURE", "CANCELED"}]
    assert not failed, f"sensor run(s) did not succeed: {failed}"
    if runs and all(r["status"] == "SUCCESS" for r in runs):
        return runs
    return None


def launch_backfill(server: DevServer, partitions: list[str]) -> str:
    params = {
        "partitionNames": partitions,
        "assetSelection": [{"path": list(a.key.path)} for a in bulk_load_assets],
        "title": "rivbulk dev test: historical dates",
    }
    result = server.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def finished_backfill(server: DevServer, backfill_id: str) -> Optional[dict[str, Any]]:
    backfill = server.graphql(BACKFILL_QUERY, {"id": backfill_id})["partitionBackfillOrError"]
    assert backfill["__typename"] == "PartitionBackfill", backfill
    if backfill["status"] in TERMINAL_BACKFILL and all(r["status"] in TERMINAL_RUN for r in backfill["runs"]):
        return backfill
    return None


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
            server, "the webserver's /server_info",
            lambda: requests.get(f"{server.url}/server_info", timeout=5).json() or None, deadline,
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
            server, f"the sensor's run for {newest.inventory_date} to succeed",
            lambda: finished_sensor_run(server), min(deadline, started + SENSOR_RUN_SECONDS),
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
        assert all(u["registrations"] == 1 for u in users if u["user_id"] in expected), users
        calls_after_sensor = registry.register_calls()

        oldest_two = dates[:2]
        backfill_id = launch_backfill(server, oldest_two)
        backfill = wait_for(
            server, f"backfill {backfill_id} of {oldest_two}", lambda: finished_backfill(server, backfill_id), deadline
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
