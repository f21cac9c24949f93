"""The import history: one record per object version, saying what the pipeline did with it.

Two implementations of `core.ports.ImportHistory`, with identical semantics:

- `SqliteImportHistory` (embedded): one SQLite file in WAL mode, one connection per thread,
  safe for a thread pool and for several Dagster run processes sharing the file.
- `DynamoImportHistory` (production): one DynamoDB table, created by `create_history_table`
  (`rivbulk create-history-table`). Key schema and attributes:

      object_uri        S  partition key  "s3://<bucket>/<key>"
      version_id        S  sort key       the S3 version id, or "null" for a null version
      etag              S  the ETag (hex) of the content the record is about
      status            S  claimed | indexed | failed_permanent | failed_transient
      user_id           S  the user registered (absent when unknown); never logged
      reason            S  why (gateway reason, error code); never property contents
      attempts          N  claims taken on this object version
      owner             S  the run that holds / held the claim
      updated_at        N  epoch seconds of the last write
      claim_expires_at  N  epoch seconds; the claim's lease (0 once an outcome is recorded)
      extra             M  optional small string diagnostics (never image bytes, never properties)

Semantics shared by both:

- `claim(ref, etag, owner, lease_seconds)` is one atomic conditional write. It succeeds iff
  there is no record, or the record is `failed_transient`, or its ETag differs from `etag`,
  or it is `claimed` with an expired lease, or `claimed` by the same owner (re-entrant).
  On success: status=claimed, owner, etag, claim_expires_at=now+lease, attempts+1.
- `record(record)` writes the outcome only while `record.owner` still owns the record; otherwise
  it raises `ClaimLost` (a `HistoryError`) and writes nothing, so a stale run can never overwrite
  a newer run's outcome. `attempts` is counted by `claim`; `record` keeps the stored count.
- `release(ref, owner)` ends this owner's lease without an outcome (the object becomes claimable).
- Every write is checked first against DynamoDB's item limit (400 KB, attribute names and values
  counted in UTF-8; the smaller, decimal reading of "KB") and its key limits; SQLite applies
  the same bounds so both behave alike.
"""
from __future__ import annotations

import abc
import json
import os
import random
import sqlite3
import threading
import time
from decimal import Decimal
from typing import Any, Iterator, Mapping, Optional, Sequence

import boto3
import dagster as dg
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, PrivateAttr

from ..core.errors import HistoryError
from ..core.model import HistoryRecord, HistoryStatus, ObjectRef

MAX_ITEM_BYTES = 400_000  # DynamoDB: "400 KB", attribute names included
MAX_PARTITION_KEY_BYTES = 2048
MAX_SORT_KEY_BYTES = 1024
_NUMBER_BYTES = 21  # DynamoDB numbers take at most 21 bytes (38 digits); count the worst case
NULL_VERSION = "null"  # S3's own name for the null version; DynamoDB keys cannot be empty

_FINAL_STATUSES = (HistoryStatus.INDEXED, HistoryStatus.FAILED_PERMANENT, HistoryStatus.FAILED_TRANSIENT)


class ClaimLost(HistoryError):
    """`record`/outcome refused: the caller no longer owns the record (another run claimed it)."""

    def __init__(self, ref: ObjectRef, owner: str, holder: Optional[str]) -> None:
        held = f"it is held by run {holder!r}" if holder else "there is no claim on it"
        super().__init__(
            f"{ref}: outcome of run {owner!r} not recorded: only the claim's owner may record an outcome, and {held}"
        )
        self.ref = ref
        self.owner = owner
        self.holder = holder


# ---------------------------------------------------------------- shared helpers


def _version_key(ref: ObjectRef) -> str:
    return ref.version_id or NULL_VERSION


def _ref_from_key(object_uri: str, version_id: str) -> ObjectRef:
    bucket, _, key = object_uri.removeprefix("s3://").partition("/")  # bucket names hold no "/"
    return ObjectRef(bucket, key, None if version_id == NULL_VERSION else version_id)


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8"))


def item_size(attrs: Mapping[str, Any]) -> int:
    """An upper bound of a DynamoDB item's size, by DynamoDB's rules: attribute names and values
    in UTF-8, numbers at their worst case, maps with 3 bytes + 1 byte per element of overhead."""
    total = 0
    for name, value in attrs.items():
        total += _utf8_len(name)
        if value is None:
            continue
        if isinstance(value, str):
            total += _utf8_len(value)
        elif isinstance(value, (int, float, Decimal)):
            total += _NUMBER_BYTES
        elif isinstance(value, Mapping):
            total += 3 + len(value) + item_size(value)
        else:
            raise TypeError(f"attribute {name!r}: unsupported type {type(value).__name__}")
    return total


def record_item_size(record: HistoryRecord) -> int:
    """The size `record()` will count for this outcome (e.g. to trim a long reason beforehand)."""
    return item_size(_outcome_attrs(record, record.updated_at or 1.0))


def _check_item(ref: ObjectRef, attrs: Mapping[str, Any]) -> None:
    """Raise HistoryError, before anything is written, when DynamoDB would refuse the item."""
    if _utf8_len(attrs["object_uri"]) > MAX_PARTITION_KEY_BYTES:
        raise HistoryError(f"{ref}: object_uri exceeds DynamoDB's {MAX_PARTITION_KEY_BYTES}-byte partition key limit")
    if _utf8_len(attrs["version_id"]) > MAX_SORT_KEY_BYTES:
        raise HistoryError(f"{ref}: version_id exceeds DynamoDB's {MAX_SORT_KEY_BYTES}-byte sort key limit")
    size = item_size(attrs)
    if size > MAX_ITEM_BYTES:
        raise HistoryError(
            f"{ref}: history record of {size} bytes exceeds DynamoDB's item limit of {MAX_ITEM_BYTES} bytes"
            " (attribute names and values, UTF-8)"
        )


def _key_attrs(ref: ObjectRef) -> dict[str, Any]:
    return {"object_uri": ref.uri, "version_id": _version_key(ref)}


def _claim_attrs(ref: ObjectRef, etag: str, owner: str, now: float, expires: float) -> dict[str, Any]:
    return {
        **_key_attrs(ref),
        "etag": etag,
        "status": HistoryStatus.CLAIMED.value,
        "owner": owner,
        "updated_at": now,
        "claim_expires_at": expires,
        "attempts": 1,
    }


def _outcome_attrs(record: HistoryRecord, now: float) -> dict[str, Any]:
    given = getattr(record.status, "value", record.status)
    try:
        status = HistoryStatus(given)
    except ValueError:
        status = None
    if status not in _FINAL_STATUSES:
        raise HistoryError(f"{record.ref}: record() takes an outcome (indexed/failed_*), not {given!r}")
    extra = dict(record.extra)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise HistoryError(f"{record.ref}: record extra must map strings to strings")
    return {
        **_key_attrs(record.ref),
        "etag": record.etag,
        "status": status.value,
        "user_id": record.user_id,
        "reason": record.reason,
        "owner": record.owner,
        "updated_at": record.updated_at or now,
        "claim_expires_at": 0,
        "attempts": record.attempts,
        "extra": extra,
    }


def _claim_allowed(row: Mapping[str, Any], etag: str, owner: str, now: float) -> bool:
    """The claim rule, for SQLite (DynamoDB states the same rule as a ConditionExpression)."""
    status = row["status"]
    return (
        status == HistoryStatus.FAILED_TRANSIENT.value
        or row["etag"] != etag
        or (status == HistoryStatus.CLAIMED.value and (row["claim_expires_at"] < now or row["owner"] == owner))
    )


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unique_keys(refs: Sequence[ObjectRef]) -> dict[tuple[str, str], ObjectRef]:
    """(object_uri, version_id) -> the caller's ref; duplicates collapse (BatchGetItem refuses them)."""
    return {(ref.uri, _version_key(ref)): ref for ref in refs}


# ---------------------------------------------------------------- the interface


class ImportHistoryResource(dg.ConfigurableResource, abc.ABC):
    """The import history as a Dagster resource: annotate with this, bind SQLite or DynamoDB."""

    @abc.abstractmethod
    def lookup(self, refs: Sequence[ObjectRef]) -> dict[ObjectRef, HistoryRecord]:
        """Batch read; refs with no record are absent from the result."""

    @abc.abstractmethod
    def claim(self, ref: ObjectRef, etag: str, owner: str, lease_seconds: float) -> bool:
        """Atomically take the object for `owner` for `lease_seconds`; False when another run
        holds it or its outcome for this ETag is final (indexed / failed_permanent)."""

    @abc.abstractmethod
    def record(self, record: HistoryRecord) -> None:
        """Write the outcome of `record.owner`'s claim; ClaimLost when it no longer owns it."""

    @abc.abstractmethod
    def release(self, ref: ObjectRef, owner: str) -> bool:
        """End `owner`'s lease without an outcome; False when it held no claim."""

    @abc.abstractmethod
    def scan(self) -> Iterator[HistoryRecord]:
        """Every record."""


# ---------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS import_history (
    object_uri TEXT NOT NULL,
    version_id TEXT NOT NULL,
    etag TEXT NOT NULL,
    status TEXT NOT NULL,
    user_id TEXT,
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL DEFAULT 0,
    claim_expires_at REAL NOT NULL DEFAULT 0,
    extra TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (object_uri, version_id)
) WITHOUT ROWID
"""
_COLUMNS = "object_uri, version_id, etag, status, user_id, reason, attempts, owner, updated_at, claim_expires_at, extra"
_SQLITE_LOOKUP_CHUNK = 500  # 1000 bound parameters per query, far below SQLite's limit


def _is_busy(error: sqlite3.OperationalError) -> bool:
    name = getattr(error, "sqlite_errorname", "")  # Python >= 3.11
    return name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(error) or "busy" in str(error)


def _record_from_row(row: Mapping[str, Any], ref: Optional[ObjectRef] = None) -> HistoryRecord:
    extra = row["extra"]
    return HistoryRecord(
        ref=ref or _ref_from_key(row["object_uri"], row["version_id"]),
        etag=row["etag"],
        status=HistoryStatus(row["status"]),
        user_id=row["user_id"],
        reason=row["reason"] or "",
        attempts=int(row["attempts"] or 0),
        owner=row["owner"] or "",
        updated_at=float(row["updated_at"] or 0),
        claim_expires_at=float(row["claim_expires_at"] or 0),
        extra=json.loads(extra) if isinstance(extra, str) else dict(extra or {}),
    )


class SqliteImportHistory(ImportHistoryResource):
    """The embedded import history: one SQLite file (WAL), shared by threads and processes."""

    db_path: str = Field(description="Path of the SQLite file; created with its schema on first use.")
    busy_timeout_ms: int = Field(default=30_000, description="How long a writer waits for another's lock.")

    _local: Any = PrivateAttr(default_factory=threading.local)
    _connections: list = PrivateAttr(default_factory=list)
    _guard: Any = PrivateAttr(default_factory=threading.Lock)

    def _conn(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared across threads.
        conn = getattr(self._local, "conn", None)
        if conn is None:
            directory = os.path.dirname(os.path.abspath(self.db_path))
            os.makedirs(directory, exist_ok=True)
            # isolation_level=None: we issue BEGIN ourselves; check_same_thread=False only so
            # close() may run from another thread at teardown.
            conn = sqlite3.connect(
                self.db_path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            self._prepare(conn)
            self._local.conn = conn
            with self._guard:
                self._connections.append(conn)
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL and create the schema. Switching the journal mode does not wait
        on the busy handler (processes opening a new file together get SQLITE_BUSY at once), so
        retry that step ourselves, within the same busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(_SCHEMA)
                return
            except sqlite3.OperationalError as error:
                if not _is_busy(error) or time.monotonic() > deadline:
                    raise HistoryError(f"{self.db_path}: cannot prepare the import history ({error})") from error
                time.sleep(random.uniform(0.01, 0.05))

    def close(self) -> None:
        """Close every connection this resource opened (any thread)."""
        with self._guard:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
            self._local = threading.local()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def lookup(self, refs: Sequence[ObjectRef]) -> dict[ObjectRef, HistoryRecord]:
        wanted = _unique_keys(refs)
        keys = list(wanted)
        found: dict[ObjectRef, HistoryRecord] = {}
        conn = self._conn()
        for chunk in _chunks(keys, _SQLITE_LOOKUP_CHUNK):
            placeholders = ",".join("(?, ?)" for _ in chunk)
            params = [part for key in chunk for part in key]
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM import_history WHERE (object_uri, version_id) IN (VALUES {placeholders})",
                params,
            )
            for row in rows:
                ref = wanted[(row["object_uri"], row["version_id"])]
                found[ref] = _record_from_row(row, ref)
        return found

    def claim(self, ref: ObjectRef, etag: str, owner: str, lease_seconds: float) -> bool:
        now = time.time()
        attrs = _claim_attrs(ref, etag, owner, now, now + lease_seconds)
        _check_item(ref, attrs)
        conn = self._conn()
        # BEGIN IMMEDIATE takes the write lock before the read: the check and the write are one step.
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM import_history WHERE object_uri = ? AND version_id = ?",
                (attrs["object_uri"], attrs["version_id"]),
            ).fetchone()
            if row is not None and not _claim_allowed(row, etag, owner, now):
                conn.execute("ROLLBACK")
                return False
            conn.execute(
                """INSERT INTO import_history
                       (object_uri, version_id, etag, status, owner, updated_at, claim_expires_at, attempts)
                   VALUES (:object_uri, :version_id, :etag, :status, :owner, :updated_at, :claim_expires_at, 1)
                   ON CONFLICT (object_uri, version_id) DO UPDATE SET
                       etag = excluded.etag, status = excluded.status, owner = excluded.owner,
                       updated_at = excluded.updated_at, claim_expires_at = excluded.claim_expires_at,
                       attempts = import_history.attempts + 1""",
                attrs,
            )
            conn.execute("COMMIT")
            return True
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def record(self, record: HistoryRecord) -> None:
        attrs = _outcome_attrs(record, time.time())
        _check_item(record.ref, attrs)
        conn = self._conn()
        # One conditional UPDATE: written only while this owner still holds the record.
        cursor = conn.execute(
            """UPDATE import_history SET etag = :etag, status = :status, user_id = :user_id, reason = :reason,
                   updated_at = :updated_at, claim_expires_at = 0, extra = :extra
               WHERE object_uri = :object_uri AND version_id = :version_id AND owner = :owner""",
            {**attrs, "extra": json.dumps(attrs["extra"])},
        )
        if cursor.rowcount == 1:
            return
        row = conn.execute(
            "SELECT owner FROM import_history WHERE object_uri = ? AND version_id = ?",
            (attrs["object_uri"], attrs["version_id"]),
        ).fetchone()
        raise ClaimLost(record.ref, record.owner, row["owner"] if row else None)

    def release(self, ref: ObjectRef, owner: str) -> bool:
        cursor = self._conn().execute(
            """UPDATE import_history SET claim_expires_at = 0, updated_at = ?
               WHERE object_uri = ? AND version_id = ? AND owner = ? AND status = ?""",
            (time.time(), ref.uri, _version_key(ref), owner, HistoryStatus.CLAIMED.value),
        )
        return cursor.rowcount == 1

    def scan(self) -> Iterator[HistoryRecord]:
        # Materialise per page so no read transaction stays open while the caller works.
        conn = self._conn()
        last: tuple[str, str] = ("", "")
        while True:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM import_history WHERE (object_uri, version_id) > (?, ?)"
                " ORDER BY object_uri, version_id LIMIT 1000",
                last,
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _record_from_row(row)
            last = (rows[-1]["object_uri"], rows[-1]["version_id"])


# ---------------------------------------------------------------- DynamoDB

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
                ConditionExpression="attribute_not_exists(#uri) OR #status = :transient OR #etag <> :etag"
                " OR (#status = :claimed AND (#expires < :now OR #owner = :owner))",
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
