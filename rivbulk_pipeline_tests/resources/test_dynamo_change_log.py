"""The DynamoDB history's lasting change log (moto): copies of the 24-hour stream, read back from
the companion table, answer "what changed since" days later; a gap in the stream, a missing
companion table and the log's own retention are each answered "cannot tell"."""

from __future__ import annotations

import json
import os
import time
import zlib

import boto3
import dagster as dg
import pytest
from moto import mock_aws

from rivbulk_pipeline.core.errors import HistoryError
from rivbulk_pipeline.core.model import HistoryRecord, HistoryStatus, ObjectRef
from rivbulk_pipeline.defs.sensors import history_change_log_sensor
from rivbulk_pipeline.resources.aws import AwsClients
from rivbulk_pipeline.resources.history import (
    DynamoImportHistory,
    SqliteImportHistory,
    create_history_table,
    dynamo_change_log,
)
from rivbulk_pipeline.resources.history.dynamo_change_log import DynamoChangeLog, log_table_name
from rivbulk_pipeline_tests.support.aws import HISTORY_TABLE, REGION
from rivbulk_pipeline_tests.support.streams_standin import StreamsStandIn

HOUR = 3600.0


class Clock:
    """The change log's clock, moved by hand: days pass in a test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dynamo(aws_env: None):
    with mock_aws():
        create_history_table(HISTORY_TABLE, AwsClients(region_name=REGION))
        yield DynamoImportHistory(table_name=HISTORY_TABLE, aws=AwsClients(region_name=REGION))


def change_log(clock: Clock) -> DynamoChangeLog:
    return DynamoChangeLog(
        HISTORY_TABLE,
        boto3.client("dynamodb", region_name=REGION),
        boto3.client("dynamodbstreams", region_name=REGION),
        clock=clock,
    )


def indexed(history: DynamoImportHistory, key: str) -> HistoryRecord:
    obj = ObjectRef("faces", key)
    assert history.claim(obj, "e1", "run-1", 60)
    record = HistoryRecord(ref=obj, etag="e1", status=HistoryStatus.INDEXED, owner="run-1", user_id="u")
    history.record(record)
    return record


def keys_of(table) -> set[str]:
    return set(table.column("object_uri").to_pylist())


def stored_copies() -> list[dict]:
    items = boto3.client("dynamodb", region_name=REGION).scan(TableName=log_table_name(HISTORY_TABLE))["Items"]
    return [item for item in items if item["log"]["S"] == "copies"]


def test_a_change_made_more_than_a_day_before_the_question_is_still_found(
    dynamo: DynamoImportHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    log = change_log(clock)
    first = log.copy()  # the first copy starts the log: nothing before it is known
    assert first.gap_found and first.keys == 0
    a, b = indexed(dynamo, "a.jpg"), indexed(dynamo, "b.jpg")
    clock.now += HOUR
    assert log.copy().keys == 2  # their outcomes (MODIFY); the claims that created them are INSERTs

    clock.now += HOUR
    previous_read = clock.now  # the previous date's qualification reads the history here
    clock.now += 1
    assert dynamo.reopen(a, "retry", "operator", "registry restored", time.time())
    clock.now += 20 * HOUR  # the hourly sensor copies; the reopen is one key, read once
    assert log.copy().keys == 1
    clock.now += 6 * HOUR  # the next date, 27 hours later: the stream alone no longer reaches back

    changed = log.changes_since(previous_read)
    assert changed is not None and keys_of(changed) == {a.ref.uri}  # b: its outcome predates the read
    assert keys_of(log.changes_since(first.covered_to)) == {a.ref.uri, b.ref.uri}
    assert log.changes_since(first.covered_from - 60) is None  # before the log began: cannot tell
    # What answered is what the companion table holds (read back raw): one copy per call, keys packed.
    stored = [key for item in stored_copies() for key, _ in json.loads(zlib.decompress(item["keys"]["B"]))]
    assert sorted(stored) == sorted([a.ref.uri, b.ref.uri, a.ref.uri])
    assert b.ref.uri not in keys_of(log.changes_since(clock.now - 1))

    # More changed keys than are worth holding: the history decides everything.
    with monkeypatch.context() as patch:
        patch.setattr(dynamo_change_log, "MAX_CHANGED_KEYS", 1)
        assert log.changes_since(first.covered_to) is None
    assert log.changes_since(first.covered_to) is not None

    clock.now += 9 * 24 * HOUR  # past the log's retention (its copies expire by TTL)
    assert log.changes_since(previous_read) is None


def test_a_deleted_record_is_a_change_too(dynamo: DynamoImportHistory) -> None:
    clock = Clock()
    log = change_log(clock)
    log.copy()
    gone = indexed(dynamo, "gone.jpg")
    clock.now += 1
    since = clock.now
    boto3.client("dynamodb", region_name=REGION).delete_item(
        TableName=HISTORY_TABLE, Key={"object_uri": {"S": gone.ref.uri}, "version_id": {"S": "null"}}
    )
    clock.now += 1
    assert keys_of(log.changes_since(since)) == {gone.ref.uri}


def test_records_the_stream_lost_since_the_last_copy_restart_the_log(dynamo: DynamoImportHistory) -> None:
    clock = Clock()
    log = change_log(clock)
    log.copy()
    clock.now += HOUR
    before_gap = clock.now
    assert log.changes_since(before_gap) is not None
    # The last copy stopped inside a shard the stream no longer lists (trimmed after 24 hours):
    client = boto3.client("dynamodb", region_name=REGION)
    position = client.get_item(
        TableName=log_table_name(HISTORY_TABLE), Key={"log": {"S": "position"}, "entry": {"S": "stream"}}
    )["Item"]
    position["shards"] = {"S": json.dumps({"shardId-trimmed-long-ago": "49000000000000000001"})}
    client.put_item(TableName=log_table_name(HISTORY_TABLE), Item=position)
    clock.now += 30 * HOUR
    copied = log.copy()
    assert copied.gap_found and copied.covered_from == pytest.approx(
        clock.now - dynamo_change_log.STREAM_RETENTION_SECONDS + dynamo_change_log.STREAM_SAFETY_SECONDS
    )
    assert log.changes_since(before_gap) is None  # the changes in between may be lost: the history decides
    assert log.changes_since(clock.now - HOUR) is not None


def test_many_keys_are_stored_in_parts_under_the_item_limit() -> None:
    keys = [(f"s3://faces/{os.urandom(24).hex()}.jpg", "null") for _ in range(40_000)]
    parts = dynamo_change_log._pack(keys)
    assert len(parts) > 1 and all(len(part) <= dynamo_change_log._PART_BYTES for part in parts)
    assert [tuple(key) for part in parts for key in json.loads(zlib.decompress(part))] == keys


def test_without_the_companion_table_the_log_cannot_tell_and_the_sensor_says_what_to_do(aws_env: None) -> None:
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        # a history table as made before the lasting log: without its companion table
        create_history_table(HISTORY_TABLE, AwsClients(region_name=REGION))
        client.delete_table(TableName=log_table_name(HISTORY_TABLE))
        history = DynamoImportHistory(table_name=HISTORY_TABLE, aws=AwsClients(region_name=REGION))
        assert history.changes_since(time.time() - 60) is None
        with pytest.raises(HistoryError, match=f"{log_table_name(HISTORY_TABLE)}.*rivbulk create-history-table"):
            history.keep_change_log()
        # `rivbulk create-history-table` on the old table adds the companion table, with its TTL on.
        create_history_table(HISTORY_TABLE, AwsClients(region_name=REGION))
        ttl = client.describe_time_to_live(TableName=log_table_name(HISTORY_TABLE))["TimeToLiveDescription"]
        assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
        assert history.keep_change_log() is not None


def test_the_sensor_copies_for_dynamodb_and_skips_for_sqlite(dynamo: DynamoImportHistory, tmp_path) -> None:
    with dg.build_sensor_context(resources={"history": dynamo}) as context:
        first = history_change_log_sensor(context)
    assert "copied 0 changed keys; the log covers every change since" in first.skip_message
    assert "starts again" in first.skip_message  # the first copy begins the log
    indexed(dynamo, "c.jpg")
    with dg.build_sensor_context(resources={"history": dynamo}) as context:
        second = history_change_log_sensor(context)
    assert "copied 1 changed keys" in second.skip_message and "starts again" not in second.skip_message
    sqlite = SqliteImportHistory(db_path=str(tmp_path / "history.db"))
    with dg.build_sensor_context(resources={"history": sqlite}) as context:
        assert "writes its change log with its records" in history_change_log_sensor(context).skip_message
    sqlite.close()


def test_shards_that_close_split_and_get_trimmed_as_the_real_stream_does(moto_server: str) -> None:
    """The history table on moto's server; its stream from a stand-in that closes, splits and trims
    shards as DynamoDB Streams does (moto's one shard never does)."""
    create_history_table(HISTORY_TABLE, AwsClients(region_name=REGION, endpoint_url=moto_server))
    uri = lambda name: f"s3://faces/{name}.jpg"  # noqa: E731
    with StreamsStandIn() as streams:
        clock = Clock()
        log = DynamoChangeLog(
            HISTORY_TABLE,
            boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_server),
            boto3.client("dynamodbstreams", region_name=REGION, endpoint_url=streams.url),
            clock=clock,
        )
        parent = streams.shard("shardId-00000001700000000000-parent01")
        parent.add("MODIFY", uri("a"))
        parent.add("INSERT", uri("new"))  # a claim on a new object: not a change of a final record
        parent.add("REMOVE", uri("b"))
        parent.close()
        child = streams.shard("shardId-00000001700000000000-child001", parent="shardId-00000001700000000000-parent01")
        child.add("MODIFY", uri("c"))
        first = log.copy()
        assert first.gap_found and first.keys == 3

        # Hours later: the child closed after one more record and split; the parent, read to its
        # end, was trimmed away. Nothing is read twice and nothing is missing.
        clock.now += 5 * HOUR
        child.add("MODIFY", uri("d"))
        child.close()
        grandchild = streams.shard(
            "shardId-00000001700000000000-grandch1", parent="shardId-00000001700000000000-child001"
        )
        grandchild.add("REMOVE", uri("e"))
        parent.listed = False
        streams.calls.clear()
        second = log.copy()
        assert (second.gap_found, second.keys) == (False, 2)
        assert second.covered_from == first.covered_from
        iterators = {(shard, kind) for op, shard, kind in streams.calls if op == "GetShardIterator"}
        assert iterators == {
            ("shardId-00000001700000000000-child001", "AFTER_SEQUENCE_NUMBER"),
            ("shardId-00000001700000000000-grandch1", "TRIM_HORIZON"),
        }
        assert keys_of(log.changes_since(first.covered_to + 1)) == {uri("d"), uri("e")}
        assert keys_of(log.changes_since(first.covered_from)) == {uri(n) for n in "abcde"}

        # A day without a copy: the records after our place in the grandchild were trimmed.
        clock.now += 30 * HOUR
        lost = grandchild.add("MODIFY", uri("lost"))
        grandchild.add("MODIFY", uri("kept"))
        grandchild.trimmed_before = lost + 1
        third = log.copy()
        assert third.gap_found and third.keys == 1  # what the shard still holds
        assert log.changes_since(second.covered_to) is None  # "lost" may have changed: cannot tell
        assert keys_of(log.changes_since(third.covered_from)) == {uri("kept")}

        # Trimmed between handing out the iterator and reading with it (the API reference's second case).
        clock.now += HOUR
        fourth_after = grandchild.add("MODIFY", uri("gone-while-reading"))
        grandchild.add("MODIFY", uri("last"))
        grandchild.trim_when_iterated = fourth_after + 1
        fourth = log.copy()
        assert fourth.gap_found and fourth.keys == 1
        assert keys_of(log.changes_since(third.covered_to + 1)) == {uri("last")}
