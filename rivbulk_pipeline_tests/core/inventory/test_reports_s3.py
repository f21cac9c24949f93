"""The sensor's scan on S3 (moto): paginated prefix listing, completeness by manifest.checksum,
a cursor of names that survives deleted and rewritten keys."""

from datetime import datetime, timedelta, timezone

import boto3
import pytest
from moto import mock_aws

from rivbulk_pipeline.core.inventory.reports import SensorCursor, scan_for_new_reports
from rivbulk_pipeline.resources.aws import AwsClients
from rivbulk_pipeline.resources.object_store import S3ObjectStore

BUCKET = "inventory"
ROOT = "inv/images/daily"
START = datetime(2024, 1, 1, 1, 0, tzinfo=timezone.utc)


def _folder(n: int) -> str:
    return (START + timedelta(days=n)).strftime("%Y-%m-%dT%H-%MZ")


@pytest.fixture
def s3(aws_env):
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client, S3ObjectStore(aws=AwsClients(region_name="us-east-1"))


def test_more_folders_than_one_listing_page(s3):
    client, store = s3
    for n in range(1005):  # past ListObjectsV2's 1,000 per page
        client.put_object(Bucket=BUCKET, Key=f"{ROOT}/{_folder(n)}/manifest.checksum", Body=b"x")
    client.put_object(Bucket=BUCKET, Key=f"{ROOT}/data/abc.csv.gz", Body=b"x")  # not a report folder
    client.put_object(Bucket=BUCKET, Key=f"{ROOT}/hive/dt=2024-01-01-01-00/symlink.txt", Body=b"x")
    now = START + timedelta(days=1010)
    first = scan_for_new_reports(store, BUCKET, ROOT, SensorCursor(), now=now)
    assert [f.name for f in first.complete] == [_folder(n) for n in range(1005)]
    again = scan_for_new_reports(store, BUCKET, ROOT, first.cursor, now=now)
    assert again.complete == []


def test_incomplete_reports_wait_and_the_cursor_survives_deletes_and_rewrites(s3):
    client, store = s3
    now = START + timedelta(days=5)
    client.put_object(Bucket=BUCKET, Key=f"{ROOT}/{_folder(0)}/manifest.checksum", Body=b"x")
    client.put_object(Bucket=BUCKET, Key=f"{ROOT}/{_folder(1)}/manifest.json", Body=b"{}")  # checksum not yet there
    client.put_object(Bucket=BUCKET, Key=f"{ROOT}/{_folder(2)}/manifest.checksum", Body=b"x")
    scan = scan_for_new_reports(store, BUCKET, ROOT, SensorCursor.parse(SensorCursor().dump()), now=now)
    assert [f.name for f in scan.complete] == [_folder(0), _folder(2)]
    assert scan.cursor.pending == [_folder(1)]

    cursor = SensorCursor.parse(scan.cursor.dump())  # as Dagster stores it
    client.delete_object(Bucket=BUCKET, Key=f"{ROOT}/{_folder(0)}/manifest.checksum")
    client.put_object(Bucket=BUCKET, Key=f"{ROOT}/{_folder(2)}/manifest.checksum", Body=b"rewritten")
    assert scan_for_new_reports(store, BUCKET, ROOT, cursor, now=now).complete == []

    client.put_object(Bucket=BUCKET, Key=f"{ROOT}/{_folder(1)}/manifest.checksum", Body=b"x")
    late = scan_for_new_reports(store, BUCKET, ROOT, cursor, now=now)
    assert [f.name for f in late.complete] == [_folder(1)] and late.cursor.pending == []
