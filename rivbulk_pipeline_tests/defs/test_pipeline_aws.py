"""Issue 3's "done when": the whole pipeline on AWS services over HTTP, configured only by the
documented environment variables.

moto's ThreadedMotoServer plays S3 and DynamoDB on 127.0.0.1, FakeRivGateway plays the RIV
UserPortal (with the registry's rules and an API key) on 127.0.0.1. The setup is what an
operator does: `rivbulk create-history-table`, the demo objects written to S3 through
S3ObjectStore, the demo's existing users registered through the RIV gateway, `rivbulk inventory`;
then the Dagster definitions are loaded from the environment and `bulk_load_job` runs for the
report's partition, twice. The expensive part runs once per module; the tests read its results.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import boto3
import dagster as dg
import pyarrow.parquet as pq
import pytest
import requests
from moto.moto_api import recorder
from moto.server import ThreadedMotoServer

from rivbulk_pipeline.cli import main
from rivbulk_pipeline.cli.demo import DEMO_CASES, OTHER_BUCKET, face_image, populate_images, preregister
from rivbulk_pipeline.core.errors import DeploymentError
from rivbulk_pipeline.core.inventory.reports import report_folders
from rivbulk_pipeline.core.model import (
    CANDIDATE_SCHEMA,
    INDEXED_SCHEMA,
    INVENTORY_SCHEMA,
    QUALIFIED_SCHEMA,
    HistoryStatus,
    Outcome,
    Reason,
)
from rivbulk_pipeline.core.rules.tags import tag_lookup
from rivbulk_pipeline.defs.partitions import inventory_dates
from rivbulk_pipeline.resources.deployment import build_resources
from rivbulk_pipeline.settings import Settings
from rivbulk_pipeline_tests.support.aws_deployment import (
    ACCESS_KEY,
    API_KEY,
    OUTPUT_PREFIX,
    REGION,
    RIVBULK_ENV,
    SECRET_KEY,
    SESSION_TOKEN,
    hermetic_aws_env,
    load_definitions,
)
from rivbulk_pipeline_tests.support.gateway_server import FakeRivGateway, SigV4Expectation
from rivbulk_pipeline_tests.support.riv_standin import RecordedRequest, RivStandIn

INDEXED_CASES = [c for c in DEMO_CASES if c.expect == "indexed"]
FAILED_CASES = [c for c in DEMO_CASES if c.expect.startswith("failed:")]
QUALIFIED_CASES = INDEXED_CASES + FAILED_CASES
# Refused by the client before sending (image checks), as opposed to refused by the gateway.
REFUSED_LOCALLY = [
    c
    for c in FAILED_CASES
    if c.expect.split(":", 1)[1] in ("corrupt_image", "unsupported_format", "too_small", "apostrophe_in_request")
]


def _expected_faces() -> dict[str, int]:
    """Faces in the registry after the load: one per registered image (olivia's second image is her second face)."""
    faces: dict[str, int] = {"olivia": 1, "victor": 1}  # registered before the pipeline ran
    for case in INDEXED_CASES:
        faces[_user_id(case)] = faces.get(_user_id(case), 0) + 1
    return faces


def _user_id(case: Any) -> Optional[str]:
    user_id = tag_lookup(case.tags, "UserId")
    return user_id.lower() if user_id else None  # as RIV keys it


@dataclass
class AwsRun:
    settings: Settings
    endpoint: str
    riv: RivStandIn
    partition: str
    first: dg.ExecuteInProcessResult
    second: dg.ExecuteInProcessResult
    first_tables: dict[str, list[dict]]  # asset -> rows, read after the first run
    second_tables: dict[str, list[dict]]
    summary: dg.ExecuteInProcessResult  # import_summary after both runs
    frames: dict[str, Any]  # asset -> the first table as the IO manager loads it (a DataFrame)
    requests_after_first: list[RecordedRequest]
    s3_requests: list[tuple[str, str]]  # (method, raw url) that moto received during both runs

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint)

    def tags(self, key: str) -> dict[str, str]:
        tag_set = self.client("s3").get_object_tagging(Bucket=self.settings.image_bucket, Key=key)["TagSet"]
        return {t["Key"]: t["Value"] for t in tag_set}


def _read_tables(s3: Any, partition: str) -> dict[str, list[dict]]:
    """The four asset tables, read straight from moto's S3 where the environment said they go."""
    tables = {}
    for asset in ("inventory_report", "batch_manifest", "qualified_objects", "indexed_users"):
        key = f"{OUTPUT_PREFIX}/{asset}/dt={partition}/{asset}.parquet"
        body = s3.get_object(Bucket=RIVBULK_ENV["RIVBULK_OUTPUT_BUCKET"], Key=key)["Body"].read()
        tables[asset] = pq.read_table(io.BytesIO(body)).to_pylist()
    return tables


def _recording(endpoint: str) -> list[tuple[str, str]]:
    text = requests.get(f"{endpoint}/moto-api/recorder/download-recording", timeout=30).text
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [(e["method"], e["url"]) for e in entries]


@pytest.fixture(scope="module")
def aws_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsRun]:
    scratch = tmp_path_factory.mktemp("aws_pipeline")
    with pytest.MonkeyPatch.context() as mp:
        hermetic_aws_env(mp, scratch)
        # moto's request recorder is our S3 access log; keep its file out of the working tree.
        mp.setattr(recorder, "_location", str(scratch / "moto_recording.jsonl"))
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            with RivStandIn(api_key=API_KEY) as riv:  # RIV's register path as its code behaves
                for name, value in RIVBULK_ENV.items():
                    mp.setenv(name, value)
                mp.setenv("RIVBULK_ENDPOINT_URL", endpoint)
                mp.setenv("RIVBULK_GATEWAY_URL", riv.url)
                yield _run_pipeline(endpoint, riv, scratch)
        finally:
            server.stop()


def _run_pipeline(endpoint: str, riv: RivStandIn, scratch: Path) -> AwsRun:
    settings = Settings.from_env()
    assert main(["create-history-table"]) == 0

    resources = build_resources(settings)  # the same Settings the pipeline will use
    store = resources["store"]
    store.create_bucket(settings.output_bucket_name)  # in production the output bucket exists
    populate_images(store, settings, datetime.now(timezone.utc))  # S3 sets Last-Modified itself: no backdating
    # The resource holds dg.EnvVar("RIVBULK_GATEWAY_API_KEY") and reads its value itself outside a run.
    preregister(resources["gateway"])
    registrations_before = len(riv.requests)

    assert main(["inventory", "--format", "CSV"]) == 0
    folders = report_folders(store, settings.inventory_bucket, resources["settings"].report_root)
    assert len(folders) == 1, folders
    partition = folders[0].inventory_date

    defs = load_definitions()
    job = defs.resolve_job_def("bulk_load_job")
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=endpoint)
    (scratch / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(scratch / "dagster_home")) as instance:
        instance.add_dynamic_partitions(inventory_dates.name, [partition])
        requests.post(f"{endpoint}/moto-api/recorder/reset-recording", timeout=30).raise_for_status()
        requests.post(f"{endpoint}/moto-api/recorder/start-recording", timeout=30).raise_for_status()
        try:
            first = job.execute_in_process(partition_key=partition, instance=instance)
            first_tables = _read_tables(s3, partition)
            requests_after_first = riv.requests
            second = job.execute_in_process(partition_key=partition, instance=instance)
            second_tables = _read_tables(s3, partition)
            # the summary (DynamoDB history) and every table as a DataFrame (S3), as an operator gets them
            summary = defs.resolve_implicit_global_asset_job_def().execute_in_process(
                instance=instance, asset_selection=[dg.AssetKey("import_summary")]
            )
            frames = {
                asset: defs.load_asset_value(asset, partition_key=partition, instance=instance)
                for asset in second_tables
            }
        finally:
            requests.post(f"{endpoint}/moto-api/recorder/stop-recording", timeout=30).raise_for_status()
    assert registrations_before == 2  # olivia and victor, before the pipeline ran
    return AwsRun(
        settings=settings,
        endpoint=endpoint,
        riv=riv,
        partition=partition,
        first=first,
        second=second,
        first_tables=first_tables,
        second_tables=second_tables,
        summary=summary,
        frames=frames,
        requests_after_first=requests_after_first,
        s3_requests=_recording(endpoint),
    )


# ---------------------------------------------------------------- outcomes


def test_settings_came_from_the_environment(aws_run: AwsRun) -> None:
    s = aws_run.settings
    assert (s.deployment, s.region, s.endpoint_url) == ("aws", REGION, aws_run.endpoint)
    assert (s.output_bucket_name, s.history_table, s.gateway_auth) == (
        "riv-aws-output",
        "riv-aws-import-history",
        "api_key",
    )
    assert s.index_rate == 50
    metadata = aws_run.first.asset_materializations_for_node("indexed_users")[0].metadata
    assert metadata["configured_rate_per_second"].value == 50
    assert (
        metadata["table_location"].value
        == f"s3://riv-aws-output/{OUTPUT_PREFIX}/indexed_users/dt={aws_run.partition}/indexed_users.parquet"
    )
    assert "table_console" not in metadata  # a custom endpoint (moto here) has no AWS console


def test_every_demo_object_ends_with_the_outcome_its_case_calls_for(aws_run: AwsRun) -> None:
    assert aws_run.first.success
    tables = aws_run.first_tables
    assert {r["key"] for r in tables["inventory_report"]} == {c.key for c in DEMO_CASES}  # odd keys decoded
    candidates = {r["key"] for r in tables["batch_manifest"]}
    qualified = {r["key"]: r for r in tables["qualified_objects"]}
    indexed = {r["key"]: r for r in tables["indexed_users"]}

    for case in DEMO_CASES:
        if case.expect.startswith("not_candidate:"):
            assert case.key not in candidates, case.key
        elif case.expect == "indexed":
            assert qualified[case.key]["qualified"], (case.key, qualified[case.key]["detail"])
            assert qualified[case.key]["user_id"] == _user_id(case)
            assert indexed[case.key]["outcome"] == Outcome.INDEXED.value, (case.key, indexed[case.key]["reason"])
        elif case.expect.startswith("failed:"):
            assert qualified[case.key]["qualified"], (case.key, qualified[case.key]["detail"])
            assert indexed[case.key]["outcome"] == Outcome.FAILED_PERMANENT.value, (case.key, indexed[case.key])
            assert case.expect.split(":", 1)[1] in indexed[case.key]["reason"], (case.key, indexed[case.key]["reason"])
        else:
            row = qualified[case.key]
            assert (row["qualified"], row["reason"]) == (False, case.expect), (case.key, row)
            assert case.key in row["detail"], row["detail"]  # the reason names the object
            assert case.key not in indexed
    assert set(indexed) == {c.key for c in QUALIFIED_CASES}

    metadata = aws_run.first.asset_materializations_for_node("indexed_users")[0].metadata
    assert metadata["outcome_indexed"].value == len(INDEXED_CASES)
    assert metadata["outcome_failed_permanent"].value == len(FAILED_CASES)


def test_indexed_tag_is_merged_only_after_a_success_and_other_tags_are_kept(aws_run: AwsRun) -> None:
    bucket = aws_run.settings.image_bucket
    for case in DEMO_CASES:
        original = {k: v.format(image_bucket=bucket) for k, v in case.tags.items()}
        expected = {**original, "Indexed": "True"} if case.expect == "indexed" else original
        assert aws_run.tags(case.key) == expected, case.key


def test_history_holds_one_final_record_per_qualified_object(aws_run: AwsRun) -> None:
    bucket = aws_run.settings.image_bucket
    pages = aws_run.client("dynamodb").get_paginator("scan").paginate(TableName=RIVBULK_ENV["RIVBULK_HISTORY_TABLE"])
    items = [item for page in pages for item in page["Items"]]
    records = {item["object_uri"]["S"]: item for item in items}
    assert len(records) == len(items)  # one record per object (version_id "null": unversioned bucket)
    assert set(records) == {f"s3://{bucket}/{c.key}" for c in QUALIFIED_CASES}

    run_id = aws_run.first.run_id
    for case in QUALIFIED_CASES:
        item = records[f"s3://{bucket}/{case.key}"]
        want = HistoryStatus.INDEXED if case.expect == "indexed" else HistoryStatus.FAILED_PERMANENT
        assert item["status"]["S"] == want.value, (case.key, item["status"], item.get("reason"))
        assert item["version_id"]["S"] == "null"
        assert item["user_id"]["S"] == _user_id(case)
        assert item["owner"]["S"] == run_id  # written by the first run, left alone by the rerun
        assert item["claim_expires_at"]["N"] == "0"  # no claim left open
        assert item["attempts"]["N"] == "1"
    etags = {r["key"]: r["e_tag"] for r in aws_run.first_tables["batch_manifest"]}
    assert all(records[f"s3://{bucket}/{c.key}"]["etag"]["S"] == etags[c.key] for c in QUALIFIED_CASES)


EXPECTED_FACES = _expected_faces()


def test_a_rerun_registers_nobody_twice(aws_run: AwsRun) -> None:
    assert aws_run.second.success
    assert len(aws_run.riv.requests) == len(aws_run.requests_after_first)  # no gateway call at all
    assert aws_run.riv.registrations == EXPECTED_FACES
    rerun = aws_run.second_tables["qualified_objects"]
    assert not any(r["qualified"] for r in rerun)
    reasons = [r["reason"] for r in rerun]
    assert reasons.count(Reason.ALREADY_INDEXED.value) == len(INDEXED_CASES)
    assert reasons.count(Reason.PREVIOUSLY_FAILED.value) == len(FAILED_CASES)
    assert aws_run.second_tables["indexed_users"] == []


# ---------------------------------------------------------------- what the services saw


def test_the_gateway_saw_the_api_key_on_every_request_and_never_the_bad_images(aws_run: AwsRun) -> None:
    seen = aws_run.riv.requests
    assert seen and all(r.headers.get("x-api-key") == API_KEY for r in seen)
    assert all(r.path.endswith("/register") and r.status == 200 for r in seen)
    sent_for = [r.user_id for r in seen]
    # Two existing users first, then one call per qualified object the client did not refuse itself.
    expected = ["olivia", "victor"] + [_user_id(c) for c in QUALIFIED_CASES if c not in REFUSED_LOCALLY]
    assert sorted(sent_for) == sorted(expected)
    sent_images = {r.body.get("Image") for r in seen}
    for case in REFUSED_LOCALLY:
        assert _user_id(case) not in sent_for, case.key
        encoded = base64.b64encode(case.body())
        assert not any(hashlib.sha256(encoded).hexdigest()[:16] in (image or "") for image in sent_images), case.key
    assert aws_run.riv.registrations == EXPECTED_FACES


def test_a_property_file_in_another_bucket_is_never_fetched(aws_run: AwsRun) -> None:
    case = next(c for c in DEMO_CASES if c.expect == Reason.PROPERTIES_NOT_ALLOWED.value)
    row = next(r for r in aws_run.first_tables["qualified_objects"] if r["key"] == case.key)
    assert (row["qualified"], row["reason"]) == (False, Reason.PROPERTIES_NOT_ALLOWED.value)
    assert "Judy" not in row["detail"]  # never the contents
    # moto's request recorder logged every request of both runs.
    image_bucket = aws_run.settings.image_bucket
    assert ("GET", f"{aws_run.endpoint}/{image_bucket}/properties/alice.json") in aws_run.s3_requests  # it records
    assert not [url for _, url in aws_run.s3_requests if url.startswith(f"{aws_run.endpoint}/{OTHER_BUCKET}")]


# ---------------------------------------------------------------- SigV4


def test_sigv4_gateway_from_the_environment_is_verified_by_the_server(
    aws_run: AwsRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RIVBULK_GATEWAY_AUTH=sigv4: the definitions' gateway signs with the standard chain's
    credentials for RIVBULK_REGION and service execute-api; the server recomputes the signature."""
    expect = SigV4Expectation(ACCESS_KEY, SECRET_KEY, REGION, token=SESSION_TOKEN)
    wrong = SigV4Expectation(ACCESS_KEY, "another-secret", REGION, token=SESSION_TOKEN)
    with FakeRivGateway(sigv4=expect) as good, FakeRivGateway(sigv4=wrong) as bad:
        results = {}
        for name, riv in (("good", good), ("bad", bad)):
            monkeypatch.setenv("RIVBULK_GATEWAY_AUTH", "sigv4")
            monkeypatch.delenv("RIVBULK_GATEWAY_API_KEY", raising=False)
            monkeypatch.setenv("RIVBULK_GATEWAY_URL", riv.url)
            gateway = load_definitions().resources["gateway"]
            try:
                results[name] = gateway.register("sigurd", face_image(42), {"team": "Green"})
            except DeploymentError as refused:
                results[name] = refused
            finally:
                gateway.close()

        assert results["good"].outcome == Outcome.INDEXED, results["good"].reason
        (request,) = good.requests
        assert request.authorized and request.user_id == "sigurd"
        assert request.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
        assert f"/{REGION}/execute-api/aws4_request" in request.headers["authorization"]
        assert "x-api-key" not in request.headers
        # A signature the server cannot reproduce is refused (403), never counted as a registration.
        assert isinstance(results["bad"], DeploymentError) and "HTTP 403" in str(results["bad"])
        assert [r.authorized for r in bad.requests] == [False]


TABLE_SCHEMAS = {
    "inventory_report": INVENTORY_SCHEMA,
    "batch_manifest": CANDIDATE_SCHEMA,
    "qualified_objects": QUALIFIED_SCHEMA,
    "indexed_users": INDEXED_SCHEMA,
}


def test_the_summary_and_dataframes_on_aws(aws_run: AwsRun) -> None:
    for asset, frame in aws_run.frames.items():
        stored = aws_run.second_tables[asset]  # what S3 holds, as a DataFrame
        assert list(frame["key"]) == [r["key"] for r in stored], asset  # (indexed_users: empty on the rerun)
        assert list(frame.columns) == TABLE_SCHEMAS[asset].names, asset
    metadata = aws_run.summary.asset_materializations_for_node("import_summary")[0].metadata
    indexed = sum(r["outcome"] == "indexed" for r in aws_run.first_tables["indexed_users"])
    assert indexed and metadata["users_registered"].value == indexed  # counted from DynamoDB
    assert metadata["dates_loaded"].value == 1
    assert (
        metadata["table_location"].value == f"s3://riv-aws-output/{OUTPUT_PREFIX}/import_summary/import_summary.parquet"
    )
