"""Issue 18 end to end on both deployments: the scenario in corrections_scenario.py.

Local: the demo under a temporary home (SQLite history, embedded registry), moto's SNS over HTTP.
AWS: moto's server for S3, DynamoDB (its stream is the change log), SNS and SQS; the RIV stand-in
for the RIV gateway.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import boto3
import dagster as dg
import pytest
import requests
from moto.server import ThreadedMotoServer

from rivbulk_pipeline.cli import main
from rivbulk_pipeline.cli.demo import create_demo, populate_images, preregister
from rivbulk_pipeline.defs.partitions import inventory_dates
from rivbulk_pipeline_tests.support.aws_deployment import (
    API_KEY,
    REGION,
    RIVBULK_ENV,
    hermetic_aws_env,
    load_definitions,
)
from rivbulk_pipeline_tests.support.corrections_scenario import (
    Deployment,
    alert_queue,
    check_backlog_alert,
    run_scenario,
)
from rivbulk_pipeline_tests.support.riv_standin import RivStandIn

ALERT_ENV = {"RIVBULK_ALERT_PERMANENT_FAILURES": "2", "RIVBULK_ALERT_TRANSIENT_BACKLOG_HOURS": "24"}


@pytest.fixture
def moto_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url
    # moto's state is the process's, not the server's: empty it for the tests that follow.
    requests.post(f"{url}/moto-api/reset", timeout=30).raise_for_status()
    server.stop()


def test_corrections_end_to_end_local(tmp_path, monkeypatch, moto_server):
    hermetic_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("RIVBULK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RIVBULK_INDEX_RATE", "200")
    monkeypatch.setenv("RIVBULK_REGION", REGION)
    monkeypatch.setenv("RIVBULK_ENDPOINT_URL", moto_server)  # the local deployment uses AWS for SNS only
    for name, value in ALERT_ENV.items():
        monkeypatch.setenv(name, value)
    topic, queue = alert_queue(moto_server, REGION)
    monkeypatch.setenv("RIVBULK_ALERT_SNS_TOPIC_ARN", topic)
    defs = load_definitions()
    settings = defs.resources["settings"]
    home = create_demo(settings, now=datetime(2026, 11, 22, 9, 30, tzinfo=timezone.utc))
    store = defs.resources["store"]

    def delete_history_row(key: str) -> None:
        with sqlite3.connect(home / "import_history.sqlite") as conn:  # as an operator with the sqlite3 shell
            assert (
                conn.execute(
                    "DELETE FROM import_history WHERE object_uri = ?", (f"s3://{settings.image_bucket}/{key}",)
                ).rowcount
                == 1
            )

    def forget(user: str) -> None:
        with sqlite3.connect(home / "registry.sqlite") as conn:
            conn.execute("DELETE FROM faces WHERE user_key = ?", (f"User::{user.lower()}",))

    def registered(user: str) -> bool:
        return any(u["user_id"] == user.lower() for u in defs.resources["gateway"].users())

    def remove(key: str) -> bytes:
        path = home / "store" / settings.image_bucket / key
        body = path.read_bytes()
        path.unlink()
        return body

    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        instance.add_dynamic_partitions(inventory_dates.name, ["2026-11-21", "2026-11-22"])
        deployment = Deployment(
            settings,
            defs,
            instance,
            moto_server,
            delete_history_row,
            forget,
            registered,
            remove,
            lambda key, body: store.put_bytes(settings.image_bucket, key, body),
        )
        run_scenario(deployment, "2026-11-21", "2026-11-22", queue)
        check_backlog_alert(deployment, queue)


def test_corrections_end_to_end_aws(tmp_path, monkeypatch, moto_server):
    hermetic_aws_env(monkeypatch, tmp_path)
    with RivStandIn(api_key=API_KEY) as riv:
        for name, value in {**RIVBULK_ENV, **ALERT_ENV}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("RIVBULK_ENDPOINT_URL", moto_server)
        monkeypatch.setenv("RIVBULK_GATEWAY_URL", riv.url)
        topic, queue = alert_queue(moto_server, REGION)
        monkeypatch.setenv("RIVBULK_ALERT_SNS_TOPIC_ARN", topic)
        assert main(["create-history-table"]) == 0
        defs = load_definitions()
        settings = defs.resources["settings"]
        store = defs.resources["store"]
        store.create_bucket(settings.output_bucket_name)
        now = datetime.now(timezone.utc)
        populate_images(store, settings, now)
        preregister(defs.resources["gateway"])
        date1, date2 = (now + timedelta(minutes=1)), (now + timedelta(days=1))
        for at in (date1, date2):
            assert main(["inventory", "--at", at.isoformat()]) == 0
        dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_server)

        def delete_history_row(key: str) -> None:  # as an operator in the console
            dynamodb.delete_item(
                TableName=settings.history_table,
                Key={"object_uri": {"S": f"s3://{settings.image_bucket}/{key}"}, "version_id": {"S": "null"}},
            )

        def remove(key: str) -> bytes:
            with store.open_read(settings.image_bucket, key) as body:
                data = body.read()
            store.delete(settings.image_bucket, key)
            return data

        (tmp_path / "dagster_home").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
            dates = [date1.date().isoformat(), date2.date().isoformat()]
            instance.add_dynamic_partitions(inventory_dates.name, dates)
            deployment = Deployment(
                settings,
                defs,
                instance,
                moto_server,
                delete_history_row,
                riv.forget_user,
                lambda user: riv.faces_for(user) > 0,
                remove,
                lambda key, body: store.put_bytes(settings.image_bucket, key, body),
            )
            run_scenario(deployment, *dates, queue)
            check_backlog_alert(deployment, queue)
