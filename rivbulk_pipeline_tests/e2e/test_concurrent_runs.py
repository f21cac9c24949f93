"""Several runs at once through a real daemon: one gateway rate for the whole deployment.

`rivbulk dev` (webserver + daemon, the instance config it writes) on the `aws` deployment:
moto's server for S3 and DynamoDB, a gateway on 127.0.0.1 that records when every call
arrives. A backfill of three dates is launched through GraphQL at once; each date's report
lists the images of its day and of the days before, so the three runs qualify overlapping
sets at the same time. The gateway's own log must show no one-second window over
RIVBULK_INDEX_RATE, every user registered exactly once, and no run waiting out a lease.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests
from moto.server import ThreadedMotoServer

from rivbulk_pipeline.cli import main
from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.core.inventory.writer import write_inventory_report
from rivbulk_pipeline.core.rules.ratelimit import max_calls_in_any_window
from rivbulk_pipeline.defs.partitions import inventory_dates
from rivbulk_pipeline.resources.deployment import build_resources
from rivbulk_pipeline.settings import Settings
from rivbulk_pipeline_tests.support.dev_server import POLL_SECONDS, DevServer, finished_backfill, launch_backfill
from rivbulk_pipeline_tests.support.riv_standin import RivStandInProcess
from rivbulk_pipeline_tests.support.waiting import wait_for

RATE = 4  # registrations per second for the deployment
USERS_PER_DATE = 6
DATES = ["2026-11-01", "2026-11-02", "2026-11-03"]
LEASE_SECONDS = 600
TOTAL_SECONDS = 360
REPOSITORY = {"repositoryLocationName": "rivbulk", "repositoryName": "__repository__"}

ENV = {
    "RIVBULK_DEPLOYMENT": "aws",
    "RIVBULK_REGION": "eu-west-1",
    "RIVBULK_IMAGE_BUCKET": "conc-images",
    "RIVBULK_INVENTORY_BUCKET": "conc-inventory",
    "RIVBULK_HISTORY_TABLE": "conc-import-history",
    "RIVBULK_INDEX_RATE": str(RATE),
    "RIVBULK_INDEX_CONCURRENCY": "8",
    "RIVBULK_CLAIM_LEASE_SECONDS": str(LEASE_SECONDS),
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}

SENSOR_QUERY = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { id sensorState { id selectorId status } }
  }
}"""
STOP_SENSOR = """
mutation Stop($id: String, $selectorId: String) {
  stopSensor(id: $id, jobSelectorId: $selectorId) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
  }
}"""
ADD_PARTITION = """
mutation Add($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on PythonError { message }
  }
}"""


def _stop_sensor(server: DevServer) -> None:
    """The sensor would also start runs for the reports written below; this test launches its own."""
    sensor = server.graphql(SENSOR_QUERY, {"selector": {**REPOSITORY, "sensorName": "inventory_report_sensor"}})
    sensor = sensor["sensorOrError"]
    assert sensor["__typename"] == "Sensor", sensor
    state = sensor["sensorState"]
    stopped = server.graphql(STOP_SENSOR, {"id": state["id"], "selectorId": state["selectorId"]})["stopSensor"]
    assert stopped["__typename"] == "StopSensorMutationResult", stopped
    assert stopped["instigationState"]["status"] == "STOPPED"


def _write_dates(settings: Settings) -> set[str]:
    """Six new users a day; each day's report lists its day's images and all earlier ones."""
    store = build_resources(settings)["store"]
    for bucket in (settings.image_bucket, settings.inventory_bucket):
        store.create_bucket(bucket)
    users = set()
    for day, _date in enumerate(DATES):
        for n in range(USERS_PER_DATE):
            user = f"user-{day}-{n}"
            key = f"day{day}/{user}.png"
            store.put_bytes(settings.image_bucket, key, face_image(1000 + day * 100 + n))
            store.put_tags(settings.image_bucket, key, {"UserId": user})
            users.add(user)
    for day, date in enumerate(DATES):
        listed = [o for o in store.list_objects(settings.image_bucket) if int(o.key[3]) <= day]
        write_inventory_report(
            store,
            listed,
            source_bucket=settings.image_bucket,
            destination_bucket=settings.inventory_bucket,
            destination_prefix=settings.inventory_prefix,
            config_id=settings.inventory_config_id,
            created_at=datetime.fromisoformat(f"{date}T01:00:00+00:00"),
            file_format="CSV",
        )
    return users


@pytest.mark.alone  # a machine busy with other tests delays calls in transit (30 ms margin)
@pytest.mark.timeout(TOTAL_SECONDS + 60)
def test_a_backfill_of_three_dates_keeps_one_gateway_rate_and_registers_everyone_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    server = None
    try:
        host, port = moto.get_host_and_port()
        with RivStandInProcess() as riv:  # RIV as its code behaves, in a process of its own
            env = {**ENV, "RIVBULK_ENDPOINT_URL": f"http://{host}:{port}", "RIVBULK_GATEWAY_URL": riv.url}
            for name in list(os.environ):
                if name.startswith(("RIVBULK_", "AWS_")):
                    monkeypatch.delenv(name)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            settings = Settings.from_env()
            assert main(["create-history-table"]) == 0

            dagster_home = tmp_path / "dagster_home"
            dagster_home.mkdir()
            started = time.monotonic()
            deadline = started + TOTAL_SECONDS
            server = DevServer(tmp_path / "home", dagster_home, tmp_path / "rivbulk-dev.log", extra_env=env)
            wait_for(
                "the webserver",
                lambda: requests.get(f"{server.url}/server_info", timeout=5).json() or None,
                deadline=deadline,
                interval=POLL_SECONDS,
                server=server,
            )
            _stop_sensor(server)
            users = _write_dates(settings)
            for date in DATES:
                added = server.graphql(
                    ADD_PARTITION, {"selector": REPOSITORY, "name": inventory_dates.name, "key": date}
                )
                assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added

            backfill_id = launch_backfill(server, DATES)
            backfill = wait_for(
                f"backfill of {DATES}",
                lambda: finished_backfill(server, backfill_id),
                deadline=deadline,
                interval=POLL_SECONDS,
                server=server,
            )
            elapsed = time.monotonic() - started

            assert backfill["status"] == "COMPLETED_SUCCESS", backfill
            assert len(backfill["runs"]) == len(DATES) and all(r["status"] == "SUCCESS" for r in backfill["runs"])
            riv.stop()  # its observations, as its own clock took them
            calls = [r for r in riv.requests if r.path.endswith("/register")]
            times = [r.received_at for r in calls]
            print(f"{len(calls)} gateway calls over {max(times) - min(times):.2f}s; the backfill took {elapsed:.0f}s")
            ordered = sorted(times)
            spans = [round(b - a, 3) for a, b in zip(ordered, ordered[RATE:])]  # RATE + 1 calls apart
            print(
                f"shortest span of {RATE + 1} consecutive calls: {min(spans)}s; gaps:"
                f" {[round(b - a, 3) for a, b in zip(ordered, ordered[1:])]}"
            )
            assert max_calls_in_any_window(times) <= RATE, spans  # the gateway's own clock
            assert riv.registrations == {user: 1 for user in users}  # everyone once, nobody twice
            assert len(calls) == len(users)  # and no call wasted on someone already registered
            assert elapsed < LEASE_SECONDS / 2  # no run sat out another run's claims
    except BaseException:
        if server is not None:
            print(f"---- rivbulk dev log ----\n{server.log_tail()}")
        raise
    finally:
        if server is not None:
            server.stop()
        moto.stop()
