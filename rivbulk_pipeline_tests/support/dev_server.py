"""`rivbulk dev` (dagster dev: webserver, daemon, code server) on 127.0.0.1 in its own process group,
and what the tests ask its webserver's GraphQL API: sensor runs, backfills."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import requests

from rivbulk_pipeline.defs.assets import bulk_load_assets

HOST = "127.0.0.1"
SENSOR = "inventory_report_sensor"
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


class DevServer:
    """`rivbulk dev` in its own process group, its output in a log file."""

    def __init__(
        self, home: Path, dagster_home: Path, log_path: Path, extra_env: Optional[dict[str, str]] = None
    ) -> None:
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
                command,
                cwd=str(home.parent),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
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
