"""The production deployment on this machine, for issue 9's tests.

One real Postgres server (pgserver's binaries, 127.0.0.1) holds the Dagster instance; moto's
server plays S3, DynamoDB, Secrets Manager and ECS on 127.0.0.1; RivStandIn plays the RIV
gateway, which checks the API key. The key is in Secrets Manager only: the environment holds
its ARN (`RIVBULK_GATEWAY_API_KEY_SECRET`), never its value. The instance config is
`deploy/dagster.yaml` itself, read from the repository, with only what this machine cannot
have replaced (see `instance_yaml`).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from rivbulk_pipeline.cli.demo import DEMO_CASES, face_image, populate_images, preregister
from rivbulk_pipeline.core.inventory.writer import write_inventory_report
from rivbulk_pipeline.core.rules.tags import tag_lookup
from rivbulk_pipeline.resources.deployment import build_resources
from rivbulk_pipeline.settings import Settings

from .postgres_server import PostgresServer, running_postgres
from .riv_standin import RivStandIn
from .waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REGION = "eu-west-1"
API_KEY = "riv-api-key-from-secrets-manager-7f3a"
PG_PASSWORD = "pg-password-only-in-secrets-manager-91c2"
SECRET_ACCESS_KEY = "rivbulk-prod-test-secret-access-key"
COMPUTE_LOG_BUCKET = "riv-prod-dagster-logs"
CLUSTER = "rivbulk"
TASK_FAMILY = "rivbulk-run"
SUBNETS = ["subnet-0a1b2c3d", "subnet-4e5f6a7b"]
SECURITY_GROUP = "sg-0123456789abcdef0"
# New good images per report: each date brings users the earlier dates did not have.
NEW_PER_DAY = {1: [("zoe/new-face.png", "zoe", 31)], 2: [("yusuf/new-face.png", "yusuf", 32)]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class World:
    """Everything the production tests share; `env` is what every process of the deployment gets."""

    endpoint: str
    riv: RivStandIn
    pg: PostgresServer
    scratch: Path
    env: dict[str, str]
    settings: Settings
    secret_arn: str
    pg_secret_arn: str
    dates: list[str] = field(default_factory=list)  # oldest first
    logs: list[Path] = field(default_factory=list)  # stdout/stderr of every process we started

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint)

    def qualified_users(self) -> set[str]:
        """The users the three dates should register (lower-cased, as RIV keys them)."""
        users = {tag_lookup(c.tags, "UserId").lower() for c in DEMO_CASES if c.expect == "indexed"}
        return users | {user for day in NEW_PER_DAY.values() for _, user, _ in day}

    def instance_yaml(self, *, launcher: str) -> str:
        """deploy/dagster.yaml as shipped. `launcher="ecs"`: only the four REPLACE_ values filled
        in; `launcher="default"`: runs as local processes, because ECS cannot start tasks here,
        by LocalRunLauncher, whose worker health check stands in for EcsRunLauncher's."""
        text = (REPO / "deploy" / "dagster.yaml").read_text()
        text = text.replace("REPLACE_CLUSTER", CLUSTER).replace("REPLACE_SUBNET_A", SUBNETS[0])
        text = text.replace("REPLACE_SUBNET_B", SUBNETS[1]).replace("REPLACE_SECURITY_GROUP", SECURITY_GROUP)
        if launcher == "default":
            start = text.index("run_launcher:")
            end = text.index("\n# Step logs")
            text = (
                text[:start]
                + "run_launcher:\n  module: rivbulk_pipeline.run_launchers\n  class: LocalRunLauncher\n"
                + text[end:]
            )
        assert not re.search(r"REPLACE_[A-Z]", text)
        return text

    def dagster_home(self, name: str, *, launcher: str) -> Path:
        home = self.scratch / name
        home.mkdir()
        (home / "dagster.yaml").write_text(self.instance_yaml(launcher=launcher))
        return home

    def start(self, name: str, args: list[str], env: Optional[dict[str, str]] = None) -> subprocess.Popen:
        log = self.scratch / f"{name}.log"
        self.logs.append(log)
        out = open(log, "ab")
        return subprocess.Popen(args, env=env or self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.scratch)


def add_date(world: World, users: list[str], created_at: datetime, seed: int) -> str:
    """New images, one per user (distinct faces from `seed` on), and a complete report at
    `created_at` listing the whole bucket; returns its inventory date."""
    store = build_resources(world.settings)["store"]
    for n, user in enumerate(users):
        key = f"{user}/face.png"
        store.put_bytes(world.settings.image_bucket, key, face_image(seed + n))
        store.put_tags(world.settings.image_bucket, key, {"UserId": user})
    write_inventory_report(
        store,
        iter(list(store.list_objects(world.settings.image_bucket))),
        source_bucket=world.settings.image_bucket,
        destination_bucket=world.settings.inventory_bucket,
        destination_prefix=world.settings.inventory_prefix,
        config_id=world.settings.inventory_config_id,
        created_at=created_at,
        file_format="CSV",
    )
    return created_at.date().isoformat()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def code_server(world: World, port: int) -> subprocess.Popen:
    """The code location as the image serves it (`dagster code-server start`), on 127.0.0.1."""
    process = world.start(
        "code-server",
        [
            str(BIN / "dagster"),
            "code-server",
            "start",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            "rivbulk_pipeline.definitions",
            "--location-name",
            "rivbulk",
        ],
    )

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the code server exited: {world.logs[-1].read_text()[-3000:]}")
        check = subprocess.run(
            [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(port), "-h", "127.0.0.1"],
            env=world.env,
            capture_output=True,
            timeout=60,
        )
        return check.returncode == 0

    wait_for("the code server", healthy, timeout=120, interval=0.5)
    return process


def workspace_file(world: World, port: int) -> Path:
    """deploy/workspace.yaml with this machine's host and port for the gRPC server."""
    text = (REPO / "deploy" / "workspace.yaml").read_text()
    assert "host: rivbulk-code" in text and "port: 4000" in text
    path = world.scratch / f"workspace-{port}.yaml"
    path.write_text(text.replace("host: rivbulk-code", "host: 127.0.0.1").replace("port: 4000", f"port: {port}"))
    return path


def _hermetic_env(scratch: Path) -> dict[str, str]:
    """Only what the deployment is given: no RIVBULK_/AWS_/DAGSTER_ variable of the host leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIVBULK_", "AWS_", "DAGSTER_"))}
    env.update(
        AWS_ACCESS_KEY_ID="AKIDRIVBULKPROD",
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_SHARED_CREDENTIALS_FILE=str(scratch / "no-credentials"),
        AWS_CONFIG_FILE=str(scratch / "no-config"),
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONUNBUFFERED="1",
    )
    return env


def _write_reports(store: Any, settings: Settings, now: datetime) -> list[str]:
    """Three dates, oldest first: the demo's objects, then one new user per later date."""
    dates = []
    for days_ago, extra_days in ((3, 0), (2, 1), (1, 2)):
        created_at = datetime.combine(
            (now - timedelta(days=days_ago)).date(), datetime.min.time(), timezone.utc
        ) + timedelta(hours=1)
        keep = {c.key for c in DEMO_CASES} | {key for d in range(1, extra_days + 1) for key, _, _ in NEW_PER_DAY[d]}
        listed = [o for o in store.list_objects(settings.image_bucket) if o.key in keep]
        write_inventory_report(
            store,
            iter(listed),
            source_bucket=settings.image_bucket,
            destination_bucket=settings.inventory_bucket,
            destination_prefix=settings.inventory_prefix,
            config_id=settings.inventory_config_id,
            created_at=created_at,
            file_format="CSV",
        )
        dates.append(created_at.date().isoformat())
    return dates


def build_world(scratch: Path, endpoint: str, riv: RivStandIn, pg: PostgresServer, mp: pytest.MonkeyPatch) -> World:
    env = _hermetic_env(scratch)
    secrets = boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    secret_arn = secrets.create_secret(Name="rivbulk/gateway-api-key", SecretString=API_KEY)["ARN"]
    pg_secret_arn = secrets.create_secret(Name="rivbulk/dagster-pg-password", SecretString=PG_PASSWORD)["ARN"]
    env.update(
        {
            "RIVBULK_DEPLOYMENT": "aws",
            "RIVBULK_REGION": REGION,
            "RIVBULK_ENDPOINT_URL": endpoint,
            "RIVBULK_IMAGE_BUCKET": "riv-prod-images",
            "RIVBULK_INVENTORY_BUCKET": "riv-prod-inventory",
            "RIVBULK_INVENTORY_PREFIX": "inventory",
            "RIVBULK_INVENTORY_CONFIG_ID": "daily",
            "RIVBULK_OUTPUT_BUCKET": "riv-prod-output",
            "RIVBULK_HISTORY_TABLE": "riv-prod-import-history",
            "RIVBULK_GATEWAY_URL": riv.url,
            "RIVBULK_GATEWAY_AUTH": "api_key",
            "RIVBULK_GATEWAY_API_KEY_SECRET": secret_arn,
            "RIVBULK_INDEX_RATE": "50",
            # Dagster's own AWS clients (EcsRunLauncher, S3ComputeLogManager) take boto3's endpoint variable.
            "AWS_ENDPOINT_URL": endpoint,
            "DAGSTER_PG_HOST": pg.host,
            "DAGSTER_PG_PORT": str(pg.port),
            "DAGSTER_PG_USERNAME": pg.user,
            "DAGSTER_PG_PASSWORD": PG_PASSWORD,  # trust authentication on the loopback: accepted, not checked
            "DAGSTER_PG_DB": pg.db_name,
            "DAGSTER_COMPUTE_LOG_BUCKET": COMPUTE_LOG_BUCKET,
            "RIVBULK_ECS_TASK_DEFINITION": TASK_FAMILY,
        }
    )
    for name in [n for n in os.environ if n.startswith(("RIVBULK_", "AWS_", "DAGSTER_"))]:
        mp.delenv(name)
    for name, value in env.items():
        if name.startswith(("RIVBULK_", "AWS_", "DAGSTER_")):
            mp.setenv(name, value)

    settings = Settings.from_env()
    resources = build_resources(settings)
    store = resources["store"]
    for bucket in (settings.output_bucket_name, COMPUTE_LOG_BUCKET):
        store.create_bucket(bucket)
    now = datetime.now(timezone.utc)
    populate_images(store, settings, now)
    for day in NEW_PER_DAY.values():
        for key, user, seed in day:
            store.put_bytes(settings.image_bucket, key, face_image(seed))
            store.put_tags(settings.image_bucket, key, {"UserId": user})
    preregister(resources["gateway"])  # reads the key from Secrets Manager, as the runs will
    resources["gateway"].close()
    subprocess.run(
        [str(BIN / "rivbulk"), "create-history-table"], env=env, check=True, capture_output=True, timeout=120
    )
    world = World(endpoint, riv, pg, scratch, env, settings, secret_arn, pg_secret_arn)
    world.dates = _write_reports(store, settings, now)
    return world


@contextlib.contextmanager
def production_world(scratch: Path, mp: pytest.MonkeyPatch) -> Iterator[World]:
    """moto's server, the loopback gateway and a fresh Postgres, populated as an operator would."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        # moto's backends are per process, shared by every server: start from an empty AWS.
        requests.post(f"http://{host}:{port}/moto-api/reset", timeout=30).raise_for_status()
        with RivStandIn(api_key=API_KEY) as riv, running_postgres() as pg:
            yield build_world(scratch, f"http://{host}:{port}", riv, pg, mp)
    finally:
        server.stop()


def iter_log_text(world: World) -> Iterator[tuple[str, str]]:
    for log in world.logs:
        if log.exists():
            yield str(log), log.read_text(errors="replace")


def pg_dump(world: World) -> str:
    """Every row of the instance's database, as SQL text."""
    from pgserver._commands import POSTGRES_BIN_PATH

    result = subprocess.run(
        [
            str(POSTGRES_BIN_PATH / "pg_dump"),
            "-h",
            world.pg.host,
            "-p",
            str(world.pg.port),
            "-U",
            world.pg.user,
            "--data-only",
            world.pg.db_name,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout
