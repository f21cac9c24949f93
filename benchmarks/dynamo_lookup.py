"""DynamoDB history lookups at scale, on moto's server over HTTP: requests, read units and time
of BatchGetItem (key by key) against one parallel Scan, for a small day and for a day that
asks about the whole table. Read units are counted by DynamoDB's rules (4 KB units, strongly
consistent, a missing key costs one); moto's own counts are not DynamoDB's."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import boto3
import pyarrow as pa
from moto.server import ThreadedMotoServer

from rivbulk_pipeline.resources.aws import AwsClients
from rivbulk_pipeline.resources.history import DynamoImportHistory, create_history_table

REGION = "us-east-1"
TABLE = "bench-import-history"


def _fill(endpoint: str, records: int) -> None:
    table = boto3.resource("dynamodb", region_name=REGION, endpoint_url=endpoint).Table(TABLE)
    with table.batch_writer() as writer:
        for i in range(records):
            writer.put_item(Item={
                "object_uri": f"s3://bench-images/people/{i:09d}/face.jpg", "version_id": "null",
                "etag": f"{i:032x}", "status": "indexed" if i % 50 else "failed_permanent", "user_id": f"user-{i}",
                "reason": "" if i % 50 else "NoFaceDetected", "owner": "run-0", "updated_at": 1, "claim_expires_at": 0,
                "attempts": 1,
            })  # fmt: skip


def _objects(start: int, count: int) -> pa.Table:
    ids = range(start, start + count)
    return pa.table({
        "object_uri": [f"s3://bench-images/people/{i:09d}/face.jpg" for i in ids],
        "version_id": ["null"] * count,
        "etag": [f"{i:032x}" for i in ids],
    })  # fmt: skip


def measure_dynamo_lookup(records: int, log: Callable[[str], None] = print) -> dict:
    """`records` history items; days asking about 1% and 100% of them, each strategy forced."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        os.environ.setdefault(name, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._server.server_port}"
        aws = AwsClients(region_name=REGION, endpoint_url=endpoint)
        create_history_table(TABLE, aws)
        log(f"  filling {records:,} history items on moto's server ...")
        _fill(endpoint, records)
        results: dict = {"records": records, "runs": []}
        for share in (0.01, 1.0):
            day = max(1, int(records * share))
            objects = _objects(0, day)
            for strategy in ("batch_get", "scan"):
                history = DynamoImportHistory(table_name=TABLE, aws=aws)
                auto = history.lookup_strategy(day)
                started = time.perf_counter()
                if strategy == "scan":  # forced either way, to compare the two
                    history._scanned = history._scan_final()
                answered = sum(history.final_outcomes(objects.slice(i, 65_536)).num_rows for i in range(0, day, 65_536))
                seconds = time.perf_counter() - started
                counts = history.read_counts()
                results["runs"].append({
                    "day": day, "share": share, "strategy": strategy, "seconds": seconds, "answered": answered,
                    "requests": counts["requests"], "read_units": counts["read_units"], "chosen_automatically": auto,
                })  # fmt: skip
                log(f"  day of {day:,} ({share:.0%}), {strategy}: {counts['requests']:,} requests, "
                    f"{counts['read_units']:,.0f} read units, {seconds:.1f}s (automatic choice: {auto})")  # fmt: skip
        return results
    finally:
        server.stop()
