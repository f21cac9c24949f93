"""The production import history in DynamoDB (key schema in the package docstring)."""
from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import Any, Iterator, Mapping, Optional, Sequence

import boto3
import pyarrow as pa
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, PrivateAttr

from ...core.errors import HistoryError
from ...core.model import HistoryRecord, HistoryStatus, ObjectRef

from .base import (
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
)


_KEY_SCHEMA = [
    {"AttributeName": "object_uri", "KeyType": "HASH"},
    {"AttributeName": "version_id", "KeyType": "RANGE"},
]
_KEY_ATTRIBUTES = [
    {"AttributeName": "object_uri", "AttributeType": "S"},
    {"AttributeName": "version_id", "AttributeType": "S"},
]
_BATCH_GET_LIMIT = 100  # DynamoDB BatchGetItem: at most 100 keys per request
_UNPROCESSED_RETRIES = 8
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _dynamodb_client(region_name: Optional[str], endpoint_url: Optional[str]) -> Any:
    # Standard retry mode retries throttling (ProvisionedThroughputExceededException,
    # ThrottlingException) and 5xx with backoff. Credentials: the default chain only.
    config = Config(retries={"mode": "standard", "total_max_attempts": 8})
    session = boto3.session.Session()  # a fresh session: the default one is not thread-safe
    return session.client("dynamodb", region_name=region_name, endpoint_url=endpoint_url, config=config)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


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
        },
        ref,
    )


def create_history_table(
    table_name: str,
    region_name: Optional[str] = None,
    endpoint_url: Optional[str] = None,
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
    client = _dynamodb_client(region_name, endpoint_url)
    try:
        try:
            table = client.describe_table(TableName=table_name)["Table"]
        except ClientError as error:
            if _error_code(error) != "ResourceNotFoundException":
                raise
            request: dict[str, Any] = {
                "TableName": table_name,
                "KeySchema": _KEY_SCHEMA,
                "AttributeDefinitions": _KEY_ATTRIBUTES,
                "BillingMode": billing_mode,
            }
            if billing_mode == "PROVISIONED":
                request["ProvisionedThroughput"] = {
                    "ReadCapacityUnits": read_capacity_units,
                    "WriteCapacityUnits": write_capacity_units,
                }
            try:
                table = client.create_table(**request)["TableDescription"]
            except ClientError as create_error:
                if _error_code(create_error) != "ResourceInUseException":  # created meanwhile by someone else
                    raise
                table = client.describe_table(TableName=table_name)["Table"]
        _check_key_schema(table_name, table)
        if table.get("TableStatus") != "ACTIVE":
            client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
        return str(table["TableArn"])
    except ClientError as error:
        raise HistoryError(f"table {table_name}: DynamoDB refused to create or describe it ({_error_code(error)})") from error
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
    region_name: Optional[str] = Field(default=None, description="AWS region; default from the environment.")
    endpoint_url: Optional[str] = Field(default=None, description="DynamoDB endpoint override (local/test).")

    _client: Any = PrivateAttr(default=None)

    def _dynamodb(self) -> Any:
        if self._client is None:
            self._client = _dynamodb_client(self.region_name, self.endpoint_url)
        return self._client

    def _fail(self, what: str, error: Exception) -> HistoryError:
        # Only the error code: DynamoDB messages may echo attribute values.
        if isinstance(error, ClientError):
            code = _error_code(error)
            if code == "ResourceNotFoundException":
                return HistoryError(
                    f"{what}: DynamoDB table {self.table_name!r} not found; create it with `rivbulk create-history-table`"
                )
            return HistoryError(f"{what}: DynamoDB table {self.table_name!r} refused the request ({code})")
        return HistoryError(f"{what}: DynamoDB table {self.table_name!r} unreachable ({type(error).__name__})")

    def lookup(self, refs: Sequence[ObjectRef]) -> dict[ObjectRef, HistoryRecord]:
        wanted = _unique_keys(refs)
        found: dict[ObjectRef, HistoryRecord] = {}
        for chunk in _chunks(list(wanted), _BATCH_GET_LIMIT):
            keys = [{"object_uri": {"S": uri}, "version_id": {"S": vid}} for uri, vid in chunk]
            for item in self._batch_get(keys):
                ref = wanted[(item["object_uri"]["S"], item["version_id"]["S"])]
                found[ref] = _record_from_item(item, ref)
        return found

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
                " OR (#status <> :claimed AND (#status = :transient OR #etag <> :etag))",
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
                    ":owner": _to_dynamo(owner),
                    ":now": _to_dynamo(now),
                    ":expires": _to_dynamo(attrs["claim_expires_at"]),
                    ":one": _to_dynamo(1),
                },
            )
            return True
        except ClientError as error:
            if _error_code(error) == "ConditionalCheckFailedException":
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
            if _error_code(error) == "ConditionalCheckFailedException":
                holder = error.response.get("Item", {}).get("owner", {}).get("S")
                raise ClaimLost(record.ref, record.owner, holder) from None
            raise self._fail(f"{record.ref}: record", error) from error
        except BotoCoreError as error:
            raise self._fail(f"{record.ref}: record", error) from error

    def release(self, ref: ObjectRef, owner: str) -> bool:
        key = _key_attrs(ref)
        try:
            self._dynamodb().update_item(
                TableName=self.table_name,
                Key={name: _to_dynamo(value) for name, value in key.items()},
                UpdateExpression="SET #expires = :zero, #updated = :now",
                ConditionExpression="#owner = :owner AND #status = :claimed",
                ExpressionAttributeNames={
                    "#expires": "claim_expires_at",
                    "#updated": "updated_at",
                    "#owner": "owner",
                    "#status": "status",
                },
                ExpressionAttributeValues={
                    ":zero": _to_dynamo(0),
                    ":now": _to_dynamo(time.time()),
                    ":owner": _to_dynamo(owner),
                    ":claimed": _to_dynamo(HistoryStatus.CLAIMED.value),
                },
            )
            return True
        except ClientError as error:
            if _error_code(error) == "ConditionalCheckFailedException":
                return False
            raise self._fail(f"{ref}: release", error) from error
        except BotoCoreError as error:
            raise self._fail(f"{ref}: release", error) from error

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
        numeric = {f.name: int if pa.types.is_integer(f.type) else float for f in schema if not pa.types.is_string(f.type)}
        values: dict[str, list] = {name: [] for name in schema.names}

        def batch() -> pa.RecordBatch:
            arrays = [pa.array(values[f.name], type=f.type) for f in schema]
            for column in values.values():
                column.clear()
            return pa.RecordBatch.from_arrays(arrays, schema=schema)

        try:
            # ProjectionExpression: DynamoDB still reads whole items, but sends only these attributes.
            pages = self._dynamodb().get_paginator("scan").paginate(
                TableName=self.table_name, ProjectionExpression=", ".join(names), ExpressionAttributeNames=names
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
