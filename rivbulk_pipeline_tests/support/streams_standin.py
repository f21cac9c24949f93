"""A stand-in for DynamoDB Streams over HTTP on 127.0.0.1, for what moto's stream never does.

moto keeps one shard that never closes and never forgets. The real service (its API reference,
GetShardIterator and GetRecords) differs in ways a reader of the stream must survive:

- shards close (EndingSequenceNumber set) and split into child shards (ParentShardId);
- records older than 24 hours are trimmed, and a shard whose records are all gone stops being
  listed; asking for an iterator after a trimmed sequence number, or reading with an iterator
  whose next record was trimmed meanwhile, fails with TrimmedDataAccessException;
- GetRecords on an open shard always hands back a NextShardIterator, even with no records; on a
  closed shard, none once its last record was read; at most `Limit` (up to 1000) records a call.

    with StreamsStandIn() as streams:
        parent = streams.shard("shardId-00000001700000000000-0000aaaa")  # ids of 28 characters or more
        parent.add("MODIFY", "s3://faces/a.jpg")
        parent.close()
        child = streams.shard("shardId-00000001700000000000-0000bbbb", parent=parent.shard_id)
        client = boto3.client("dynamodbstreams", endpoint_url=streams.url, ...)

Every call is recorded in `calls` as (operation, shard id, iterator type).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from .aws import answer_aws_json


def _seq(number: int) -> str:
    return f"{number:021d}"


@dataclass
class StandInShard:
    shard_id: str
    parent: Optional[str]
    first: int  # the shard's first sequence number
    records: list[tuple[int, str, str]] = field(default_factory=list)  # (sequence, event, object_uri)
    closed_at: Optional[int] = None  # its last sequence number once closed
    trimmed_before: int = 0  # records below this sequence number are gone
    listed: bool = True
    trim_when_iterated: Optional[int] = None  # trim to here as soon as an iterator is handed out
    _next: int = 0

    def add(self, event: str, object_uri: str) -> int:
        assert self.closed_at is None, "a closed shard takes no records"
        number = max([self.first - 1, *[n for n, _, _ in self.records]]) + 1
        self.records.append((number, event, object_uri))
        return number

    def close(self) -> None:
        self.closed_at = max([self.first, *[n for n, _, _ in self.records]])


class StreamsStandIn:
    def __init__(self, created: Optional[float] = None) -> None:
        self.created = created if created is not None else time.time()
        self.shards: dict[str, StandInShard] = {}
        self.calls: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._next_first = 100
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                operation = self.headers["X-Amz-Target"].split(".")[-1]
                with standin._lock:
                    status, answer = standin._answer(operation, body)
                answer_aws_json(self, status, answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "StreamsStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()

    def shard(self, shard_id: str, parent: Optional[str] = None) -> StandInShard:
        with self._lock:
            shard = StandInShard(shard_id, parent, self._next_first)
            self._next_first += 1000
            self.shards[shard_id] = shard
            return shard

    # ---------------------------------------------------------------- the API

    @staticmethod
    def _error(name: str, message: str) -> tuple[int, dict[str, Any]]:
        return 400, {"__type": f"com.amazonaws.dynamodb.v20120810#{name}", "message": message}

    def _answer(self, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if operation == "DescribeStream":
            self.calls.append((operation, "", ""))
            shards = []
            for shard in self.shards.values():
                if not shard.listed:
                    continue
                numbers: dict[str, str] = {"StartingSequenceNumber": _seq(shard.first)}
                if shard.closed_at is not None:
                    numbers["EndingSequenceNumber"] = _seq(shard.closed_at)
                shards.append(
                    {"ShardId": shard.shard_id, "SequenceNumberRange": numbers}
                    | ({"ParentShardId": shard.parent} if shard.parent else {})
                )
            return 200, {
                "StreamDescription": {
                    "StreamArn": body["StreamArn"],
                    "StreamStatus": "ENABLED",
                    "StreamViewType": "KEYS_ONLY",
                    "CreationRequestDateTime": self.created,
                    "Shards": shards,
                }
            }
        if operation == "GetShardIterator":
            shard = self.shards.get(body["ShardId"])
            kind = body["ShardIteratorType"]
            self.calls.append((operation, body["ShardId"], kind))
            if shard is None or not shard.listed:
                return self._error("ResourceNotFoundException", "Requested resource not found")
            if kind == "TRIM_HORIZON":
                at = max(shard.first, shard.trimmed_before)
            elif kind == "AFTER_SEQUENCE_NUMBER":
                at = int(body["SequenceNumber"]) + 1
                if at < shard.trimmed_before:
                    return self._error(
                        "TrimmedDataAccessException", "The data you are trying to access has been trimmed."
                    )
            else:
                return self._error("ValidationException", f"iterator type {kind} is not in this stand-in")
            if shard.trim_when_iterated is not None:
                shard.trimmed_before, shard.trim_when_iterated = shard.trim_when_iterated, None
            return 200, {"ShardIterator": f"{shard.shard_id}|{at}"}
        if operation == "GetRecords":
            shard_id, at_text = body["ShardIterator"].split("|")
            shard, at = self.shards[shard_id], int(at_text)
            self.calls.append((operation, shard_id, ""))
            if at < shard.trimmed_before:
                return self._error("TrimmedDataAccessException", "The data you are trying to access has been trimmed.")
            page = [r for r in shard.records if r[0] >= at][: min(int(body.get("Limit", 1000)), 1000)]
            after = page[-1][0] + 1 if page else at
            records = [
                {
                    "eventID": f"{shard_id}-{number}",
                    "eventName": event,
                    "eventVersion": "1.1",
                    "eventSource": "aws:dynamodb",
                    "dynamodb": {
                        "ApproximateCreationDateTime": time.time(),
                        "Keys": {"object_uri": {"S": uri}, "version_id": {"S": "null"}},
                        "SequenceNumber": _seq(number),
                        "SizeBytes": 60,
                        "StreamViewType": "KEYS_ONLY",
                    },
                }
                for number, event, uri in page
            ]
            answer: dict[str, Any] = {"Records": records}
            if shard.closed_at is None or any(number >= after for number, _, _ in shard.records):
                answer["NextShardIterator"] = f"{shard_id}|{after}"
            return 200, answer
        return self._error("UnknownOperationException", operation)
