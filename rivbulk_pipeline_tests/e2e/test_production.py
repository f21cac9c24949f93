"""Issue 9's "done when": the production deployment, run for real on this machine.

- A real Postgres (see postgres_server.py) is the Dagster instance's storage, configured by
  `deploy/dagster.yaml`; the code location is served by `dagster code-server start` as the image
  does, loaded through `deploy/workspace.yaml`; `dagster-daemon run` runs the sensor, the run
  queue and a backfill of two dates. Runs are local processes here (DefaultRunLauncher): ECS
  cannot start tasks on this machine.
- EcsRunLauncher, configured by `deploy/dagster.yaml` as shipped, launches a run; its RunTask
  request is captured by a botocore event hook (`before-call.ecs.RunTask`) on the launcher's own
  ECS client, because moto 5.2 cannot run an awsvpc (Fargate) task (`run_task` raises inside moto:
  its NetworkInterface has no `private_dns_name`). Every other ECS call (describe/register task
  definition) goes to moto's server. The captured command is then executed locally with only
  the task definition's environment and secrets, as the ECS task would, against the same Postgres.
- The gateway's API key is read from Secrets Manager (moto), and is nowhere in the instance.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any, Iterator

import dagster as dg
import pytest
from botocore.awsrequest import AWSResponse
from dagster_aws.ecs import EcsRunLauncher

from rivbulk_pipeline.cli.demo import DEMO_CASES
from rivbulk_pipeline_tests.support.production_world import (
    API_KEY,
    BIN,
    CLUSTER,
    PG_PASSWORD,
    SECRET_ACCESS_KEY,
    SECURITY_GROUP,
    SUBNETS,
    TASK_FAMILY,
    World,
    code_server,
    free_port,
    iter_log_text,
    pg_dump,
    production_world,
    stop,
    workspace_file,
)
from rivbulk_pipeline_tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(600)

TASK_ARN = f"arn:aws:ecs:eu-west-1:123456789012:task/{CLUSTER}/0123456789abcdef"
FAILED = [c for c in DEMO_CASES if c.expect.startswith("failed:")]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        with production_world(tmp_path_factory.mktemp("production"), mp) as built:
            yield built


@pytest.fixture(scope="module")
def grpc_port(world: World) -> Iterator[int]:
    port = free_port()
    process = code_server(world, port)
    try:
        yield port
    finally:
        stop(process)


def _finished(instance: dg.DagsterInstance, count: int) -> list[dg.DagsterRun] | None:
    # The loads only: the daemon also refreshes the unpartitioned import_summary after them.
    runs = [r for r in instance.get_runs() if "dagster/partition" in r.tags]
    done = [r for r in runs if r.is_finished]
    return runs if len(runs) >= count and len(done) == len(runs) else None


@pytest.fixture(scope="module")
def daemon_runs(world: World, grpc_port: int) -> Iterator[tuple[dg.DagsterInstance, list[dg.DagsterRun]]]:
    """The sensor's run for the newest date and a backfill of the two older ones, by the daemon."""
    home = world.dagster_home("dagster_home_daemon", launcher="default")
    env = {**world.env, "DAGSTER_HOME": str(home)}
    workspace = workspace_file(world, grpc_port)
    started_wall = time.time()
    daemon = world.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env=env)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            newest, older = world.dates[-1], world.dates[:-1]
            started = time.monotonic()
            wait_for(
                "the sensor's run for the newest date",
                lambda: instance.get_runs(dg.RunsFilter(tags={"dagster/partition": newest})),
                timeout=180,
            )
            backfill = subprocess.run(
                [
                    str(BIN / "dagster"),
                    "job",
                    "backfill",
                    "-w",
                    str(workspace),
                    "-j",
                    "bulk_load_job",
                    "--partitions",
                    ",".join(older),
                    "--noprompt",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert backfill.returncode == 0, backfill.stdout + backfill.stderr
            print(f"[production] sensor run requested after {time.monotonic() - started:.1f}s")
            runs = wait_for("three finished runs", lambda: _finished(instance, 3), timeout=400, interval=2)
            print(f"[production] three runs finished after {time.monotonic() - started:.1f}s")
            for run in sorted(runs, key=lambda r: r.tags["dagster/partition"]):
                stats = instance.get_run_stats(run.run_id)
                print(
                    f"[production] {run.tags['dagster/partition']}: launched {stats.launch_time - started_wall:.1f}s "
                    f"start {stats.start_time - started_wall:.1f}s end {stats.end_time - started_wall:.1f}s"
                )
            # The daemon shares this Postgres with the ECS test's instance: stopped now, its run
            # queue cannot dequeue and launch that test's queued run a second time.
            stop(daemon)
            yield instance, runs
    finally:
        stop(daemon)


# ---------------------------------------------------------------- the daemon, the sensor, a backfill


def test_the_sensor_loads_the_newest_date_and_a_backfill_the_two_older_ones(daemon_runs, world: World) -> None:
    instance, runs = daemon_runs
    by_date = {r.tags["dagster/partition"]: r for r in runs}
    assert sorted(by_date) == world.dates and len(runs) == 3
    assert by_date[world.dates[-1]].tags.get("dagster/sensor_name") == "inventory_report_sensor"
    assert all("dagster/backfill" in by_date[d].tags for d in world.dates[:-1])
    failures = [
        (r.tags["dagster/partition"], e.step_key, e.message)
        for r in runs
        if r.status != dg.DagsterRunStatus.SUCCESS
        for e in instance.all_logs(r.run_id)
        if e.dagster_event_type
        in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.ENGINE_EVENT)
        and e.message
    ]
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}, failures
    # Storage really is Postgres: the runs are rows there.
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    dump = pg_dump(world)
    assert all(r.run_id in dump for r in runs)


def test_every_user_is_registered_once_across_the_three_runs(daemon_runs, world: World) -> None:
    # One face per registered image, read back from RIV's table: olivia's second image is her second face.
    expected = {user: 1 for user in world.qualified_users() | {"victor"}} | {"olivia": 2}
    assert world.riv.registrations == expected
    items = world.client("dynamodb").scan(TableName=world.settings.history_table)["Items"]
    statuses = sorted(item["status"]["S"] for item in items)
    assert statuses.count("indexed") == len(world.qualified_users())
    assert statuses.count("failed_permanent") == len(FAILED)
    assert set(statuses) == {"indexed", "failed_permanent"}  # no claim left behind


def test_the_gateway_pool_ran_one_indexing_step_at_a_time(daemon_runs) -> None:
    instance, runs = daemon_runs
    windows = []
    for run in runs:
        records = instance.all_logs(run.run_id)
        starts = [
            r.timestamp
            for r in records
            if r.step_key == "indexed_users" and r.dagster_event_type == dg.DagsterEventType.STEP_START
        ]
        ends = [
            r.timestamp
            for r in records
            if r.step_key == "indexed_users" and r.dagster_event_type == dg.DagsterEventType.STEP_SUCCESS
        ]
        assert len(starts) == len(ends) == 1, run.run_id
        windows.append((starts[0], ends[0]))
    windows.sort()
    for (_, end), (next_start, _) in zip(windows, windows[1:]):
        assert end <= next_start, windows
    assert instance.event_log_storage.get_concurrency_info("riv_gateway").slot_count == 1  # from deploy/dagster.yaml


def test_step_logs_are_in_s3(daemon_runs, world: World) -> None:
    _, runs = daemon_runs
    listed = world.client("s3").list_objects_v2(Bucket="riv-prod-dagster-logs", Prefix="dagster/compute-logs/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert any(runs[0].run_id in key for key in keys), keys[:10]


def test_the_api_key_comes_from_secrets_manager_and_is_nowhere_in_the_instance(daemon_runs, world: World) -> None:
    # It was used: every call the runs made carried it.
    assert world.riv.requests and all(r.headers.get("x-api-key") == API_KEY for r in world.riv.requests)
    assert all(r.status == 200 for r in world.riv.requests)  # the stand-in checks the key (403 otherwise)
    assert "RIVBULK_GATEWAY_API_KEY" not in world.env  # the environment held the secret's ARN only
    dump = pg_dump(world)
    assert "riv_gateway" in dump and world.dates[0] in dump  # the dump is the real storage
    assert API_KEY not in dump
    s3 = world.client("s3")
    for obj in s3.list_objects_v2(Bucket="riv-prod-dagster-logs").get("Contents", []):
        assert API_KEY not in s3.get_object(Bucket="riv-prod-dagster-logs", Key=obj["Key"])["Body"].read().decode(
            errors="replace"
        ), obj["Key"]
    for name, text in iter_log_text(world):
        assert API_KEY not in text, name


# ---------------------------------------------------------------- EcsRunLauncher


def _register_task_definition(world: World) -> str:
    """What an operator registers (README): the image, the RIVBULK_* and DAGSTER_PG_* environment,
    the Postgres password as a Secrets Manager reference."""
    plain = {k: v for k, v in world.env.items() if k.startswith(("RIVBULK_", "DAGSTER_PG_", "DAGSTER_COMPUTE"))}
    plain.pop("DAGSTER_PG_PASSWORD")
    plain["DAGSTER_HOME"] = "/opt/dagster/dagster_home"
    ecs = world.client("ecs")
    ecs.create_cluster(clusterName=CLUSTER)
    return ecs.register_task_definition(
        family=TASK_FAMILY,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="1024",
        memory="4096",
        executionRoleArn="arn:aws:iam::123456789012:role/rivbulk-execution",
        taskRoleArn="arn:aws:iam::123456789012:role/rivbulk-task",
        containerDefinitions=[
            {
                "name": "rivbulk",
                "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/rivbulk:test",
                "essential": True,
                "environment": [{"name": k, "value": v} for k, v in sorted(plain.items())],
                "secrets": [{"name": "DAGSTER_PG_PASSWORD", "valueFrom": world.pg_secret_arn}],
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]


def _task_environment(world: World, task_definition_arn: str) -> dict[str, str]:
    """The environment the ECS agent gives the container: the task definition's variables, its
    secrets resolved from Secrets Manager, credentials from the task role (here: moto's)."""
    container = world.client("ecs").describe_task_definition(taskDefinition=task_definition_arn)["taskDefinition"][
        "containerDefinitions"
    ][0]
    env = {k: v for k, v in world.env.items() if not k.startswith(("RIVBULK_", "DAGSTER_"))}
    env.update({e["name"]: e["value"] for e in container["environment"]})
    secrets = world.client("secretsmanager")
    for secret in container["secrets"]:
        env[secret["name"]] = secrets.get_secret_value(SecretId=secret["valueFrom"])["SecretString"]
    env.pop("DAGSTER_HOME")  # the command carries the instance; no DAGSTER_HOME folder exists here
    return env


def test_ecs_run_launcher_request_and_its_command_run_locally(world: World, grpc_port: int, daemon_runs) -> None:
    from dagster._cli.job import execute_launch_command
    from dagster._cli.workspace.cli_target import get_workspace_from_cli_opts
    from dagster_shared.cli import WorkspaceOpts

    task_definition_arn = _register_task_definition(world)
    home = world.dagster_home("dagster_home_ecs", launcher="ecs")
    workspace = WorkspaceOpts(workspace=[str(workspace_file(world, grpc_port))])
    date = world.dates[-1]
    captured: list[dict[str, Any]] = []

    def capture_run_task(params: dict, model: Any, **kwargs: Any) -> tuple[AWSResponse, dict]:
        captured.append({"api_params": json.loads(params["body"]) if params.get("body") else {}, "url": params["url"]})
        task_arn = TASK_ARN
        parsed = {
            "tasks": [
                {
                    "taskArn": task_arn,
                    "clusterArn": f"arn:aws:ecs:eu-west-1:123456789012:cluster/{CLUSTER}",
                    "lastStatus": "PROVISIONING",
                }
            ],
            "failures": [],
        }
        return AWSResponse(params["url"], 200, {}, None), parsed

    with dg.DagsterInstance.from_config(str(home)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, EcsRunLauncher) and type(launcher).__name__ == "RivbulkEcsRunLauncher"
        assert launcher.task_definition == task_definition_arn  # resolved through moto from the family name
        launcher.ecs.meta.events.register("before-call.ecs.RunTask", capture_run_task)
        run = execute_launch_command(
            instance=instance,
            workspace_opts=workspace,
            job_name="bulk_load_job",
            tags=json.dumps({"dagster/partition": date}),
        )
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.QUEUED  # the queue decides
        with get_workspace_from_cli_opts(instance, dg.__version__, workspace) as context:
            instance.launch_run(run.run_id, context)  # what the daemon's run queue does next

        (request,) = captured
        body = request["api_params"]
        assert body["taskDefinition"] == task_definition_arn
        assert body["cluster"] == CLUSTER and body["launchType"] == "FARGATE"
        assert body["networkConfiguration"] == {
            "awsvpcConfiguration": {
                "subnets": SUBNETS,
                "securityGroups": [SECURITY_GROUP],
                "assignPublicIp": "DISABLED",
            }
        }
        (override,) = body["overrides"]["containerOverrides"]
        assert override["name"] == "rivbulk"
        command = override["command"]
        assert command[:3] == ["dagster", "api", "execute_run"]
        wire = json.dumps(body)
        for secret in (API_KEY, PG_PASSWORD, SECRET_ACCESS_KEY):
            assert secret not in wire
        assert "DAGSTER_PG_PASSWORD" in wire  # the instance in the command names the variable, not its value
        assert {"key": "dagster/run_id", "value": run.run_id} in body["tags"]
        assert instance.get_run_by_id(run.run_id).tags["ecs/task_arn"] == TASK_ARN  # the launcher's answer, recorded

        # The task would now run `command` in the image: run it here with the task's environment only.
        env = _task_environment(world, task_definition_arn)
        registrations_before = dict(world.riv.registrations)
        worker = subprocess.run(
            [str(BIN / "dagster"), *command[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=world.scratch,
        )
        (world.scratch / "ecs-worker.log").write_text(worker.stdout + worker.stderr)
        world.logs.append(world.scratch / "ecs-worker.log")
        assert worker.returncode == 0, worker.stderr[-3000:]
        finished = instance.get_run_by_id(run.run_id)
        assert finished.status == dg.DagsterRunStatus.SUCCESS, worker.stderr[-3000:]
        for asset in ("inventory_report", "batch_manifest", "qualified_objects", "indexed_users"):
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert event is not None and event.run_id == run.run_id, asset  # materialized by the ECS command
        assert world.riv.registrations == registrations_before  # the date was loaded: nobody registered twice
