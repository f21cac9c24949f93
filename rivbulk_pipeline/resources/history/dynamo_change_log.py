"""The DynamoDB history's change log, kept beyond the 24 hours its stream holds.

The history table's stream (keys only: no user ids leave the table) names every key modified or
removed, by a run, a correction or a hand in the console, but DynamoDB keeps its records 24
hours, and a daily load asks about the day before: about 24 hours, so the stream alone rarely
reaches back far enough. `copy()` moves what the stream holds into a companion table, picking up
each shard where the last copy stopped; the daily loads and the `rivbulk_history_change_log`
sensor (hourly) call it, so the companion table covers without a gap for as long as a copy runs
at least once a day. Companion table `<history table>-changes`:

    log    S  partition key  "position" (one item) or "copies"
    entry  S  sort key       "stream" for the position; for a copy, its end time (zero-padded
                             epoch seconds, so that the copies sort by it) and a part number
    position: stream_arn S, shards S (JSON: shard id -> last sequence number read, or "done"),
              covered_from N (since when no change is missing: reset when a gap is found),
              version N (conditional writes: two copiers at once never move it back)
    a copy:   keys B (zlib of a JSON list of [object_uri, version_id]); its entry's time is
              when its reading of the stream ended, so every record it holds happened before,
              expires_at N (DynamoDB's TTL removes copies after LOG_RETENTION_SECONDS)

A copy is written before the position that follows it, so a copier killed in between copies the
same records again next time: keys may repeat, never go missing. Keys-only records cannot tell
a correction from a claim, so the log is a superset, which only costs those keys a lookup.
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any, Callable, Optional

import pyarrow as pa
from botocore.exceptions import BotoCoreError, ClientError

from ...core.errors import HistoryError
from ...core.model import ChangeLogCopy
from ..aws import error_code
from .base import CHANGES_SCHEMA

# The table's stream (keys only: no user ids leave the table) is what the log is copied from.
STREAM_SPECIFICATION = {"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"}
STREAM_RETENTION_SECONDS = 24 * 3600
STREAM_SAFETY_SECONDS = 600  # records near the 24-hour edge may already be trimmed
LOG_RETENTION_SECONDS = 8 * 24 * 3600  # a week of dates back, and a day of slack
LOG_SUFFIX = "-changes"
# More changed keys than this and the history decides everything: held as a set they would cost
# hundreds of MB, and excluding them leaves the shortcut little to skip.
MAX_CHANGED_KEYS = 1_000_000
EMPTY_PAGES_CAUGHT_UP = 3  # empty pages in a row after which an open stream shard counts as read
_DONE = "done"
_PART_BYTES = 300_000  # a copy's keys per item, compressed: under DynamoDB's 400 KB item limit
_KEY_SCHEMA = [{"AttributeName": "log", "KeyType": "HASH"}, {"AttributeName": "entry", "KeyType": "RANGE"}]
_KEY_ATTRIBUTES = [
    {"AttributeName": "log", "AttributeType": "S"},
    {"AttributeName": "entry", "AttributeType": "S"},
]
_POSITION = {"log": {"S": "position"}, "entry": {"S": "stream"}}


def log_table_name(history_table: str) -> str:
    return history_table + LOG_SUFFIX


def _entry(at: float) -> str:
    return f"{at:020.6f}"


def dynamo_error(what: str, table: str, error: Exception) -> HistoryError:
    """A DynamoDB failure as a HistoryError: only the error code, as DynamoDB messages may echo
    attribute values; a missing table says how to create it."""
    if isinstance(error, ClientError):
        code = error_code(error)
        if code == "ResourceNotFoundException":
            return HistoryError(
                f"{what}: DynamoDB table {table!r} not found; create it with `rivbulk create-history-table`"
            )
        return HistoryError(f"{what}: DynamoDB table {table!r} refused the request ({code})")
    return HistoryError(f"{what}: DynamoDB table {table!r} unreachable ({type(error).__name__})")


def create_log_table(client: Any, history_table: str, billing: dict[str, Any]) -> None:
    """Create the companion table (idempotent), wait until it is ACTIVE and turn TTL on."""
    name = log_table_name(history_table)
    try:
        client.create_table(TableName=name, KeySchema=_KEY_SCHEMA, AttributeDefinitions=_KEY_ATTRIBUTES, **billing)
    except ClientError as error:
        if error_code(error) != "ResourceInUseException":
            raise
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    ttl = client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
        )


def _pack(keys: list[tuple[str, str]]) -> list[bytes]:
    """The keys in compressed parts each under _PART_BYTES (halved until they fit)."""
    packed = zlib.compress(json.dumps(keys).encode(), 6)
    if len(packed) <= _PART_BYTES or len(keys) < 2:
        return [packed]
    half = len(keys) // 2
    return _pack(keys[:half]) + _pack(keys[half:])


class DynamoChangeLog:
    """Copies the history table's stream into the companion table, and answers from it."""

    def __init__(self, history_table: str, dynamodb: Any, streams: Any, clock: Callable[[], float] = time.time) -> None:
        self.history_table = history_table
        self.table = log_table_name(history_table)
        self._dynamodb = dynamodb
        self._streams = streams
        self._clock = clock

    def _fail(self, what: str, error: Exception) -> HistoryError:
        return dynamo_error(what, self.table, error)

    # ------------------------------------------------------------------ copying

    def copy(self) -> ChangeLogCopy:
        """Read the stream from where the last copy stopped and store the keys it names."""
        try:
            return self._copy()
        except (ClientError, BotoCoreError) as error:
            raise self._fail(f"copying the change stream of {self.history_table!r}", error) from error

    def _copy(self) -> ChangeLogCopy:
        now = self._clock()
        position = self._dynamodb.get_item(TableName=self.table, Key=_POSITION, ConsistentRead=True).get("Item")
        table = self._dynamodb.describe_table(TableName=self.history_table)["Table"]
        arn = table.get("LatestStreamArn")
        if not arn or not table.get("StreamSpecification", {}).get("StreamEnabled"):
            raise HistoryError(
                f"table {self.history_table!r} has no stream: run `rivbulk create-history-table` to turn it on"
            )
        description = self._streams.describe_stream(StreamArn=arn)["StreamDescription"]
        shards = list(description.get("Shards", []))
        while description.get("LastEvaluatedShardId"):
            description = self._streams.describe_stream(
                StreamArn=arn, ExclusiveStartShardId=description["LastEvaluatedShardId"]
            )["StreamDescription"]
            shards += description.get("Shards", [])
        listed = {shard["ShardId"] for shard in shards}

        saved: dict[str, str] = {}
        gap = position is None or position["stream_arn"]["S"] != arn
        if not gap:
            saved = json.loads(position["shards"]["S"])
            # A shard not read to its end that the stream no longer lists was trimmed: records lost.
            gap = any(state != _DONE and shard not in listed for shard, state in saved.items())
        if gap:
            saved = {}
        keys: set[tuple[str, str]] = set()
        reached: dict[str, str] = {}
        for shard in shards:
            shard_id = shard["ShardId"]
            state = saved.get(shard_id, "")
            if state == _DONE:
                reached[shard_id] = _DONE
                continue
            try:
                reached[shard_id] = self._read_shard(arn, shard, state, keys)
            except ClientError as error:
                if error_code(error) != "TrimmedDataAccessException":
                    raise
                gap = True  # records after our position were trimmed: read what the shard still holds
                reached[shard_id] = self._read_shard(arn, shard, "", keys)

        if gap:
            began = description.get("CreationRequestDateTime")
            covered_from = max(
                began.timestamp() if began is not None else now, now - STREAM_RETENTION_SECONDS + STREAM_SAFETY_SECONDS
            )
        else:
            covered_from = float(position["covered_from"]["N"])
        # Stamped when the reading ended: every record read happened before, so a question about
        # changes since T finds them all in the copies that end at or after T.
        end = self._clock()
        # The copy first: a copier killed before the position is written copies these records again.
        self._store_copy(sorted(keys), end)
        version = int(position["version"]["N"]) if position is not None else 0
        try:
            self._dynamodb.put_item(
                TableName=self.table,
                Item={
                    **_POSITION,
                    "stream_arn": {"S": arn},
                    "shards": {"S": json.dumps(reached, sort_keys=True)},
                    "covered_from": {"N": repr(covered_from)},
                    "version": {"N": str(version + 1)},
                },
                ConditionExpression="attribute_not_exists(version) OR version = :read",
                ExpressionAttributeValues={":read": {"N": str(version)}},
            )
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
            # Another copier moved the position meanwhile; what both read is stored either way.
        return ChangeLogCopy(len(keys), covered_from, end, gap)

    def _read_shard(self, arn: str, shard: dict[str, Any], after: str, keys: set) -> str:
        """Collect the MODIFY and REMOVE keys of one shard, after sequence number `after` (from its
        oldest record when empty); the position reached in it."""
        start = (
            {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after}
            if after
            else {"ShardIteratorType": "TRIM_HORIZON"}
        )
        iterator = self._streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], **start).get(
            "ShardIterator"
        )
        # A closed shard is read until its iterator ends. An open one hands out iterators for ever,
        # and an empty page does not prove it caught up (records may lie further on): it is read
        # until several pages in a row are empty.
        closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
        empty_pages = 0
        last = after
        while iterator:
            page = self._streams.get_records(ShardIterator=iterator, Limit=1000)
            for record in page.get("Records", []):
                change = record.get("dynamodb", {})
                last = change.get("SequenceNumber", last)
                if record.get("eventName") in ("MODIFY", "REMOVE"):
                    key = change.get("Keys", {})
                    keys.add((key["object_uri"]["S"], key["version_id"]["S"]))
            empty_pages = 0 if page.get("Records") else empty_pages + 1
            if not closed and empty_pages >= EMPTY_PAGES_CAUGHT_UP:
                return last
            iterator = page.get("NextShardIterator")
        return _DONE if closed else last

    def _store_copy(self, keys: list[tuple[str, str]], end: float) -> None:
        if not keys:
            return  # nothing changed: the position alone says how far the log reaches
        expires = str(int(end + LOG_RETENTION_SECONDS))
        for part, packed in enumerate(_pack(keys)):
            self._dynamodb.put_item(
                TableName=self.table,
                Item={
                    "log": {"S": "copies"},
                    "entry": {"S": f"{_entry(end)}#{part:04d}"},
                    "keys": {"B": packed},
                    "expires_at": {"N": expires},
                },
            )

    # ------------------------------------------------------------------ answering

    def changes_since(self, since: float) -> Optional[pa.Table]:
        """Every key the stream named at or after `since`, copied up to now first; None when the
        log has a gap after `since`, does not reach back that far, cannot be copied, or names
        more than MAX_CHANGED_KEYS keys."""
        try:
            covered_from = self._copy().covered_from
        except (ClientError, BotoCoreError, HistoryError):
            # No companion table yet, no permission, no stream: the log is a shortcut, so the
            # history decides everything; the sensor's failing ticks say why.
            return None
        if since < max(covered_from, self._clock() - LOG_RETENTION_SECONDS + STREAM_SAFETY_SECONDS):
            return None
        keys: set[tuple[str, str]] = set()
        try:
            pages = self._dynamodb.get_paginator("query").paginate(
                TableName=self.table,
                ConsistentRead=True,
                KeyConditionExpression="#log = :copies AND #entry >= :since",
                ExpressionAttributeNames={"#log": "log", "#entry": "entry"},
                ExpressionAttributeValues={":copies": {"S": "copies"}, ":since": {"S": _entry(since)}},
            )
            for page in pages:
                for item in page.get("Items", []):
                    keys.update(map(tuple, json.loads(zlib.decompress(item["keys"]["B"]))))
                    if len(keys) > MAX_CHANGED_KEYS:
                        return None
        except (ClientError, BotoCoreError) as error:
            raise self._fail(f"reading the change log of {self.history_table!r}", error) from error
        ordered = sorted(keys)
        return pa.Table.from_pydict(
            {"object_uri": [uri for uri, _ in ordered], "version_id": [vid for _, vid in ordered]},
            schema=CHANGES_SCHEMA,
        )
