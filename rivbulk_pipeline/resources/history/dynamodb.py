"""The production import history in DynamoDB (key schema in the package docstring)."""

from __future__ import annotations

import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, PrivateAttr

from ...core.errors import HistoryError
from ...core.model import CORRECTION_FIELDS, ChangeLogCopy, HistoryRecord, HistoryStatus, ObjectRef
from ...core.rules.limits import dynamodb_item_size
from ...core.steps.known_outcomes import combined_hash
from ..aws import AwsClients, error_code
from .base import (
    LOOKUP_SCHEMA,
    ClaimLost,
    ImportHistoryResource,
    _check_item,
    _chunks,
    _claim_attrs,
    _key_attrs,
    _outcome_attrs,
    _record_from_row,
    _summary_schema,
    _unique_keys,
    correction_attrs,
    reopened_reason,
)
from .dynamo_change_log import STREAM_SPECIFICATION, DynamoChangeLog, create_log_table, dynamo_error

_KEY_SCHEMA = [
    {"AttributeName": "object_uri", "KeyType": "HASH"},
    {"AttributeName": "version_id", "KeyType": "RANGE"},
]
_KEY_ATTRIBUTES = [
    {"AttributeName": "object_uri", "AttributeType": "S"},
    {"AttributeName": "version_id", "AttributeType": "S"},
]
_BATCH_GET_LIMIT = 100  # DynamoDB BatchGetItem: at most 100 keys per request
_READ_UNIT_BYTES = 4096  # a strongly consistent read unit reads up to 4 KB
_TYPICAL_ITEM_BYTES = 300  # an indexed record of a 60-character key, by DynamoDB's size rule
_UNPROCESSED_RETRIES = 8
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _dynamodb_client(aws: AwsClients) -> Any:
    # Standard retry mode (AwsClients' default) retries throttling (ProvisionedThroughputExceeded,
    # ThrottlingException) and 5xx with backoff.
    return aws.client("dynamodb")


def _to_dynamo(value: Any) -> dict[str, Any]:
    if isinstance(value, float):
        value = Decimal(repr(value))  # the serializer refuses floats: they are inexact
    return _serializer.serialize(value)


def _from_dynamo(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


def _record_from_item(item: Mapping[str, Any], ref: Optional[ObjectRef] = None) -> HistoryRecord:
    plain = _from_dynamo(item)
    return _record_from_row(
        {
            **plain,
            "user_id": plain.get("user_id"),
            "reason": plain.get("reason", ""),
            "attempts": plain.get("attempts", 0),
            "owner": plain.get("owner", ""),
            "updated_at": plain.get("updated_at", 0),
            "claim_expires_at": plain.get("claim_expires_at", 0),
            "extra": plain.get("extra", {}),
            **{name: plain.get(name) for name in CORRECTION_FIELDS},
        },
        ref,
    )


class ReadCounter:
    """Requests and read units, counted from every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.read_units = 0.0

    def add(self, requests: int, read_units: float) -> None:
        with self._lock:
            self.requests += requests
            self.read_units += read_units

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {"requests": self.requests, "read_units": self.read_units}


def _stored_size(item: Mapping[str, Any]) -> int:
    """An item's size as DynamoDB counts it, from its wire form (names and values, UTF-8)."""
    return dynamodb_item_size(_from_dynamo(item))


def _items_table(items: Sequence[Mapping[str, Any]]) -> pa.Table:
    def text(item: Mapping[str, Any], name: str) -> Optional[str]:
        return item.get(name, {}).get("S")

    return pa.Table.from_pydict(
        {name: [text(item, name) for item in items] for name in LOOKUP_SCHEMA.names}, schema=LOOKUP_SCHEMA
    ).set_column(4, "reason", pa.array([text(item, "reason") or "" for item in items], pa.string()))


class _ScannedHistory:
    """The final outcomes of a whole-table Scan, as sorted fingerprints of (object_uri,
    version_id, etag): about 9 bytes per record however large the table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._failure_reasons: dict[int, str] = {}
        self.prints = np.zeros(0, np.uint64)
        self.statuses = np.zeros(0, np.uint8)

    def add(self, items: Sequence[Mapping[str, Any]]) -> None:
        final = [item for item in items if item.get("status", {}).get("S") in _FINAL_CODES and "etag" in item]
        if not final:
            return
        table = _items_table(final)
        prints = _object_prints(table)
        codes = np.array([_FINAL_CODES[s] for s in table.column("status").to_pylist()], np.uint8)
        with self._lock:
            self._parts.append((prints, codes))
            for fp, code, reason in zip(prints.tolist(), codes.tolist(), table.column("reason").to_pylist()):
                if code == _FINAL_CODES[HistoryStatus.FAILED_PERMANENT.value]:
                    self._failure_reasons[fp] = reason

    def sorted(self) -> "_ScannedHistory":
        if self._parts:
            prints = np.concatenate([p for p, _ in self._parts])
            codes = np.concatenate([c for _, c in self._parts])
            order = np.argsort(prints)
            self.prints, self.statuses = prints[order], codes[order]
        self._parts = []
        return self

    def answer(self, objects: pa.Table) -> pa.Table:
        if not len(self.prints) or not objects.num_rows:
            return LOOKUP_SCHEMA.empty_table()
        prints = _object_prints(objects)
        at = np.minimum(np.searchsorted(self.prints, prints), len(self.prints) - 1)
        hit = np.flatnonzero(self.prints[at] == prints)
        found = objects.select(["object_uri", "version_id", "etag"]).take(pa.array(hit, pa.int64()))
        codes = self.statuses[at[hit]]
        names = {code: status for status, code in _FINAL_CODES.items()}
        reasons = [self._failure_reasons.get(fp, "") for fp in prints[hit].tolist()]
        return pa.Table.from_arrays(
            [*found.columns, pa.array([names[c] for c in codes.tolist()], pa.string()), pa.array(reasons, pa.string())],
            schema=LOOKUP_SCHEMA,
        )


_FINAL_CODES = {HistoryStatus.INDEXED.value: 1, HistoryStatus.FAILED_PERMANENT.value: 2}


def _object_prints(table: pa.Table) -> np.ndarray:
    return combined_hash((table.column(n) for n in ("object_uri", "version_id", "etag")), table.num_rows)


def create_history_table(
    table_name: str,
    aws: AwsClients,
    billing_mode: str = "PAY_PER_REQUEST",
    *,
    read_capacity_units: int = 5,
    write_capacity_units: int = 5,
) -> str:
    """Create the import history table (idempotent) and wait until it is ACTIVE; return its ARN.

    An existing table with the right key schema is accepted as is; one with another key schema
    raises HistoryError. `billing_mode` is PAY_PER_REQUEST or PROVISIONED (then the capacities apply).
    """
    if billing_mode not in ("PAY_PER_REQUEST", "PROVISIONED"):
        raise HistoryError(f"table {table_name}: billing_mode must be PAY_PER_REQUEST or PROVISIONED")
    client = _dynamodb_client(aws)
    billing: dict[str, Any] = {"BillingMode": billing_mode}
    if billing_mode == "PROVISIONED":
        billing["ProvisionedThroughput"] = {
            "ReadCapacityUnits": read_capacity_units,
            "WriteCapacityUnits": write_capacity_units,
        }
    try:
        try:
            table = client.describe_table(TableName=table_name)["Table"]
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
            try:
                table = client.create_table(
                    TableName=table_name,
                    KeySchema=_KEY_SCHEMA,
                    AttributeDefinitions=_KEY_ATTRIBUTES,
                    StreamSpecification=STREAM_SPECIFICATION,
                    **billing,
                )["TableDescription"]
            except ClientError as create_error:
                if error_code(create_error) != "ResourceInUseException":  # created meanwhile by someone else
                    raise
                table = client.describe_table(TableName=table_name)["Table"]
        _check_key_schema(table_name, table)
        if table.get("TableStatus") != "ACTIVE":
            client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
        if not table.get("StreamSpecification", {}).get("StreamEnabled"):
            # A table from before the change log: turn its stream on (the shortcut waits a day for it).
            client.update_table(TableName=table_name, StreamSpecification=STREAM_SPECIFICATION)
        create_log_table(client, table_name, billing)
        return str(table["TableArn"])
    except ClientError as error:
        raise HistoryError(
            f"table {table_name}: DynamoDB refused to create or describe it ({error_code(error)})"
        ) from error
    except BotoCoreError as error:
        raise HistoryError(f"table {table_name}: could not reach DynamoDB ({type(error).__name__})") from error


def _check_key_schema(table_name: str, table: Mapping[str, Any]) -> None:
    key_schema = sorted((k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", []))
    types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
    expected = sorted((k["AttributeName"], k["KeyType"]) for k in _KEY_SCHEMA)
    if key_schema != expected or any(types.get(name) != "S" for name, _ in expected):
        found = ", ".join(f"{name} ({kind}, {types.get(name, '?')})" for name, kind in key_schema)
        raise HistoryError(
            f"table {table_name} exists with key schema [{found}]; the import history needs"
            " object_uri (HASH, S) and version_id (RANGE, S)"
        )


class DynamoImportHistory(ImportHistoryResource):
    """The production import history: a DynamoDB table (see the module docstring for its schema)."""

    table_name: str = Field(description="The DynamoDB table (create it with `rivbulk create-history-table`).")
    aws: AwsClients = Field(description="The boto3 configuration every AWS adapter shares (dagster-aws's fields).")

    lookup_concurrency: int = Field(default=8, description="BatchGetItem requests in flight at once.")
    scan_segments: int = Field(default=8, description="Segments (threads) of the parallel Scan.")

    _client: Any = PrivateAttr(default=None)
    _scanned: Any = PrivateAttr(default=None)
    _log: Any = PrivateAttr(default=None)
    _reads: Any = PrivateAttr(default_factory=lambda: ReadCounter())

    def _dynamodb(self) -> Any:
        if self._client is None:
            self._client = _dynamodb_client(self.aws)
        return self._client

    def _fail(self, what: str, error: Exception) -> HistoryError:
        return dynamo_error(what, self.table_name, error)

    def lookup(self, refs: Sequence[ObjectRef]) -> dict[ObjectRef, HistoryRecord]:
        wanted = _unique_keys(refs)
        found: dict[ObjectRef, HistoryRecord] = {}
        for item in self._batch_get_all(list(wanted)):
            ref = wanted[(item["object_uri"]["S"], item["version_id"]["S"])]
            found[ref] = _record_from_item(item, ref)
        return found

    def _batch_get_all(self, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Every item of these unique keys: BatchGetItem, 100 keys a request, `lookup_concurrency`
        requests in flight (boto3 clients are thread-safe)."""
        requests = [
            [{"object_uri": {"S": uri}, "version_id": {"S": vid}} for uri, vid in chunk]
            for chunk in _chunks(keys, _BATCH_GET_LIMIT)
        ]
        if len(requests) <= 1:
            return [item for request in requests for item in self._batch_get(request)]
        with ThreadPoolExecutor(max_workers=self.lookup_concurrency, thread_name_prefix="history-get") as pool:
            return [
                item for items in pool.map(lambda request: list(self._batch_get(request)), requests) for item in items
            ]

    def lookup_table(self, keys: pa.Table) -> pa.Table:
        unique = list(dict.fromkeys(zip(keys.column("object_uri").to_pylist(), keys.column("version_id").to_pylist())))
        return _items_table(self._batch_get_all(unique))

    def lookup_strategy(self, count: int) -> str:
        """`batch_get` or `scan` for a day asking about `count` objects. BatchGetItem costs at least
        one read unit per key; a Scan one per 4 KB of the whole table. When the day's keys cost
        more than reading the table, one parallel Scan answers them all from memory."""
        try:
            table = self._dynamodb().describe_table(TableName=self.table_name)["Table"]
        except (ClientError, BotoCoreError) as error:
            raise self._fail("describe", error) from error
        # DynamoDB refreshes these two figures about every six hours; the item count times a
        # typical record covers a size not yet counted.
        table_bytes = max(int(table.get("TableSizeBytes", 0)), int(table.get("ItemCount", 0)) * _TYPICAL_ITEM_BYTES)
        scan_units = math.ceil(table_bytes / _READ_UNIT_BYTES)
        return "scan" if count > 0 and table_bytes > 0 and scan_units < count else "batch_get"

    def expect_lookups(self, count: int) -> str:
        strategy = self.lookup_strategy(count)
        self._scanned = self._scan_final() if strategy == "scan" else None
        return strategy

    def final_outcomes(self, objects: pa.Table) -> pa.Table:
        if self._scanned is None:
            return super().final_outcomes(objects)
        return self._scanned.answer(objects)

    def read_counts(self) -> dict[str, float]:
        """Requests and read units (by DynamoDB's rules: 4 KB units, strongly consistent) so far."""
        return self._reads.snapshot()

    def _scan_final(self) -> "_ScannedHistory":
        """One parallel Scan: fingerprints of the final (object, ETag) pairs, and the reasons of
        permanent failures (few). Other records are not kept: a key not found final is asked of
        nobody else, which is what a claimed or transient record means for qualification too."""
        index = _ScannedHistory()

        def segment(number: int) -> None:
            request: dict[str, Any] = {
                "TableName": self.table_name,
                "ConsistentRead": True,
                "Segment": number,
                "TotalSegments": self.scan_segments,
            }  # whole items: a projection would not lower the read units, which count whole items
            while True:
                try:
                    page = self._dynamodb().scan(**request)
                except (ClientError, BotoCoreError) as error:
                    raise self._fail("scan", error) from error
                items = page.get("Items", [])
                # Read units of a Scan: the size of the items read (all attributes), rounded up per page.
                self._reads.add(1, math.ceil(sum(_stored_size(item) for item in items) / _READ_UNIT_BYTES))
                index.add(items)
                if "LastEvaluatedKey" not in page:
                    return
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

        with ThreadPoolExecutor(max_workers=self.scan_segments, thread_name_prefix="history-scan") as pool:
            list(pool.map(segment, range(self.scan_segments)))
        return index.sorted()

    def _batch_get(self, keys: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """BatchGetItem, retrying UnprocessedKeys (throttling, 16 MB pages) with backoff."""
        request = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
        failures = 0
        while request:
            try:
                response = self._dynamodb().batch_get_item(RequestItems=request)
            except (ClientError, BotoCoreError) as error:
                raise self._fail(f"lookup of {len(keys)} objects", error) from error
            items = response.get("Responses", {}).get(self.table_name, [])
            asked = len(request[self.table_name]["Keys"])
            unprocessed = len((response.get("UnprocessedKeys") or {}).get(self.table_name, {}).get("Keys", []))
            # Each key read costs its item's size in 4 KB units, at least one (a missing item too).
            units = sum(math.ceil(_stored_size(item) / _READ_UNIT_BYTES) - 1 for item in items) + asked - unprocessed
            self._reads.add(1, units)
            yield from items
            request = response.get("UnprocessedKeys") or {}
            if not request:
                return
            failures = 0 if items else failures + 1  # a partial page is progress; nothing back is not
            if failures > _UNPROCESSED_RETRIES:
                raise HistoryError(
                    f"lookup of {len(keys)} objects: DynamoDB table {self.table_name!r} left keys unprocessed"
                    f" after {_UNPROCESSED_RETRIES} retries"
                )
            time.sleep(random.uniform(0, min(5.0, 0.05 * 2**failures)))  # full jitter

    def claim(self, ref: ObjectRef, etag: str, owner: str, lease_seconds: float) -> bool:
        now = time.time()
        attrs = _claim_attrs(ref, etag, owner, now, now + lease_seconds)
        _check_item(ref, attrs)
        try:
            self._dynamodb().update_item(
                TableName=self.table_name,
                Key={name: _to_dynamo(attrs[name]) for name in ("object_uri", "version_id")},
                UpdateExpression="SET #etag = :etag, #status = :claimed, #owner = :owner, #updated = :now,"
                " #expires = :expires ADD #attempts :one",
                ConditionExpression="attribute_not_exists(#uri)"
                " OR (#status = :claimed AND (#expires < :now OR #owner = :owner))"
                " OR (#status <> :claimed AND (#status IN (:transient, :reopened) OR #etag <> :etag))",
                ExpressionAttributeNames={
                    "#uri": "object_uri",
                    "#etag": "etag",
                    "#status": "status",
                    "#owner": "owner",
                    "#updated": "updated_at",
                    "#expires": "claim_expires_at",
                    "#attempts": "attempts",
                },
                ExpressionAttributeValues={
                    ":etag": _to_dynamo(etag),
                    ":claimed": _to_dynamo(HistoryStatus.CLAIMED.value),
                    ":transient": _to_dynamo(HistoryStatus.FAILED_TRANSIENT.value),
                    ":reopened": _to_dynamo(HistoryStatus.REOPENED.value),
                    ":owner": _to_dynamo(owner),
                    ":now": _to_dynamo(now),
                    ":expires": _to_dynamo(attrs["claim_expires_at"]),
                    ":one": _to_dynamo(1),
                },
            )
            return True
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                return False
            raise self._fail(f"{ref}: claim", error) from error
        except BotoCoreError as error:
            raise self._fail(f"{ref}: claim", error) from error

    def record(self, record: HistoryRecord) -> None:
        attrs = _outcome_attrs(record, time.time())
        _check_item(record.ref, attrs)
        names = {"#uri": "object_uri", "#owner": "owner"}
        values = {":owner": _to_dynamo(record.owner)}
        sets = []
        for name in ("etag", "status", "reason", "updated_at", "claim_expires_at", "extra"):
            names[f"#{name}"], values[f":{name}"] = name, _to_dynamo(attrs[name])
            sets.append(f"#{name} = :{name}")
        names["#user_id"] = "user_id"
        update = "SET " + ", ".join(sets)
        if record.user_id is None:
            update += " REMOVE #user_id"
        else:
            values[":user_id"] = _to_dynamo(record.user_id)
            update = update.replace("SET ", "SET #user_id = :user_id, ", 1)
        try:
            self._dynamodb().update_item(
                TableName=self.table_name,
                Key={name: _to_dynamo(attrs[name]) for name in ("object_uri", "version_id")},
                UpdateExpression=update,
                ConditionExpression="attribute_exists(#uri) AND #owner = :owner",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                holder = error.response.get("Item", {}).get("owner", {}).get("S")
                raise ClaimLost(record.ref, record.owner, holder) from None
            raise self._fail(f"{record.ref}: record", error) from error
        except BotoCoreError as error:
            raise self._fail(f"{record.ref}: record", error) from error

    def release(self, ref: ObjectRef, owner: str) -> bool:
        return self._set_own_lease(ref, owner, 0, "release")

    def renew(self, ref: ObjectRef, owner: str, lease_seconds: float) -> bool:
        return self._set_own_lease(ref, owner, time.time() + lease_seconds, "renew")

    def _set_own_lease(self, ref: ObjectRef, owner: str, expires_at: float, what: str) -> bool:  # 0: ended
        """Set the lease of `owner`'s claim (0: ended); False when `owner` holds no claim."""
        key = _key_attrs(ref)
        try:
            self._dynamodb().update_item(
                TableName=self.table_name,
                Key={name: _to_dynamo(value) for name, value in key.items()},
                UpdateExpression="SET #expires = :expires_at, #updated = :now",
                ConditionExpression="#owner = :owner AND #status = :claimed",
                ExpressionAttributeNames={
                    "#expires": "claim_expires_at",
                    "#updated": "updated_at",
                    "#owner": "owner",
                    "#status": "status",
                },
                ExpressionAttributeValues={
                    ":expires_at": _to_dynamo(expires_at),
                    ":now": _to_dynamo(time.time()),
                    ":owner": _to_dynamo(owner),
                    ":claimed": _to_dynamo(HistoryStatus.CLAIMED.value),
                },
            )
            return True
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                return False
            raise self._fail(f"{ref}: {what}", error) from error
        except BotoCoreError as error:
            raise self._fail(f"{ref}: {what}", error) from error

    def reopen(self, record: HistoryRecord, correction: str, by: str, why: str, at: float) -> bool:
        values = {
            ":reopened": HistoryStatus.REOPENED.value,
            ":reason": reopened_reason(correction, record),
            ":at": at,
            ":zero": 0,
            ":status": record.status.value,
            ":etag": record.etag,
            **{f":{name}": value for name, value in correction_attrs(correction, by, why, at).items()},
        }
        names = {
            "#status": "status",
            "#reason": "reason",
            "#updated": "updated_at",
            "#expires": "claim_expires_at",
            "#etag": "etag",
            "#uri": "object_uri",
        }
        sets = ["#status = :reopened", "#reason = :reason", "#updated = :at", "#expires = :zero"]
        for name in correction_attrs("", "", "", 0):
            names[f"#{name}"] = name
            sets.append(f"#{name} = :{name}")
        try:
            self._dynamodb().update_item(
                TableName=self.table_name,
                Key={name: _to_dynamo(value) for name, value in _key_attrs(record.ref).items()},
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression="attribute_exists(#uri) AND #status = :status AND #etag = :etag",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={name: _to_dynamo(value) for name, value in values.items()},
            )
            return True
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                return False
            raise self._fail(f"{record.ref}: reopen", error) from error
        except BotoCoreError as error:
            raise self._fail(f"{record.ref}: reopen", error) from error

    def _change_log(self) -> DynamoChangeLog:
        # One per resource: the hourly sensor and each load's questions share its clients.
        if self._log is None:
            self._log = DynamoChangeLog(self.table_name, self._dynamodb(), self.aws.client("dynamodbstreams"))
        return self._log

    def keep_change_log(self) -> Optional[ChangeLogCopy]:
        return self._change_log().copy()

    def changes_since(self, since: float) -> Optional[pa.Table]:
        return self._change_log().changes_since(since)

    def records_of(self, object_uri: str) -> list[HistoryRecord]:
        try:
            pages = (
                self._dynamodb()
                .get_paginator("query")
                .paginate(
                    TableName=self.table_name,
                    ConsistentRead=True,
                    KeyConditionExpression="#uri = :uri",
                    ExpressionAttributeNames={"#uri": "object_uri"},
                    ExpressionAttributeValues={":uri": {"S": object_uri}},
                )
            )
            return [_record_from_item(item) for page in pages for item in page.get("Items", [])]
        except (ClientError, BotoCoreError) as error:
            raise self._fail("query", error) from error

    def records_of_user(self, user_id: str) -> list[HistoryRecord]:
        # A Scan with a filter: it reads the whole table (an operator's question, not the daily run).
        try:
            pages = (
                self._dynamodb()
                .get_paginator("scan")
                .paginate(
                    TableName=self.table_name,
                    ConsistentRead=True,
                    FilterExpression="#user = :user",
                    ExpressionAttributeNames={"#user": "user_id"},
                    ExpressionAttributeValues={":user": {"S": user_id}},
                )
            )
            return [_record_from_item(item) for page in pages for item in page.get("Items", [])]
        except (ClientError, BotoCoreError) as error:
            raise self._fail("scan", error) from error

    def scan(self) -> Iterator[HistoryRecord]:
        try:
            pages = self._dynamodb().get_paginator("scan").paginate(TableName=self.table_name, ConsistentRead=True)
            for page in pages:
                for item in page.get("Items", []):
                    yield _record_from_item(item)
        except (ClientError, BotoCoreError) as error:
            raise self._fail("scan", error) from error

    def scan_columns(self, columns: Sequence[str], batch_rows: int = 100_000) -> Iterator[pa.RecordBatch]:
        schema = _summary_schema(columns)
        names = {f"#c{i}": name for i, name in enumerate(schema.names)}  # `status` is a reserved word
        numeric = {
            f.name: int if pa.types.is_integer(f.type) else float for f in schema if not pa.types.is_string(f.type)
        }
        values: dict[str, list] = {name: [] for name in schema.names}

        def batch() -> pa.RecordBatch:
            arrays = [pa.array(values[f.name], type=f.type) for f in schema]
            for column in values.values():
                column.clear()
            return pa.RecordBatch.from_arrays(arrays, schema=schema)

        try:
            # ProjectionExpression: DynamoDB still reads whole items, but sends only these attributes.
            pages = (
                self._dynamodb()
                .get_paginator("scan")
                .paginate(
                    TableName=self.table_name, ProjectionExpression=", ".join(names), ExpressionAttributeNames=names
                )
            )
            for page in pages:
                for item in page.get("Items", []):
                    for name in schema.names:
                        attr = item.get(name)
                        if attr is None:
                            values[name].append(None)
                        elif name in numeric:
                            values[name].append(numeric[name](Decimal(attr["N"])) if "N" in attr else None)
                        else:
                            values[name].append(attr.get("S"))
                    if len(values[schema.names[0]]) >= batch_rows:
                        yield batch()
        except (ClientError, BotoCoreError) as error:
            raise self._fail("scan", error) from error
        if values[schema.names[0]]:
            yield batch()
