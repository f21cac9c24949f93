"""The import history: one semantic suite run against SQLite and DynamoDB (moto), plus the
backend-specific parts (HTTP endpoint, table creation, UnprocessedKeys, processes, Dagster)."""

from __future__ import annotations

import http.server
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import boto3
import dagster as dg
import pyarrow as pa
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from rivbulk_pipeline.core.errors import HistoryError
from rivbulk_pipeline.core.model import HISTORY_LOOKUP_SCHEMA, HistoryRecord, HistoryStatus, ObjectRef
from rivbulk_pipeline.resources.aws import AwsClients
from rivbulk_pipeline.resources.history import (
    MAX_ITEM_BYTES,
    ClaimLost,
    DynamoImportHistory,
    ImportHistoryResource,
    SqliteImportHistory,
    create_history_table,
    record_item_size,
)
from rivbulk_pipeline.resources.history.sqlite import LOOKUP_QUERY as SQLITE_LOOKUP_QUERY
from rivbulk_pipeline_tests.support.aws import HISTORY_TABLE as TABLE
from rivbulk_pipeline_tests.support.aws import REGION, answer_aws_json


def ref(key: str, version_id: str | None = None) -> ObjectRef:
    return ObjectRef("faces", key, version_id)


def outcome(obj: ObjectRef, status: HistoryStatus, owner: str, etag: str = "e1", **kw: object) -> HistoryRecord:
    return HistoryRecord(ref=obj, etag=etag, status=status, owner=owner, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the shared semantics


def test_claim_creates_a_record_and_lookup_reads_it(history: ImportHistoryResource) -> None:
    obj, absent = ref("users/alice.jpg"), ref("users/nobody.jpg")
    before = time.time()
    assert history.claim(obj, "e1", "run-1", 60)
    found = history.lookup([obj, absent])
    assert set(found) == {obj}
    rec = found[obj]
    assert (rec.ref, rec.etag, rec.status, rec.owner, rec.attempts) == (obj, "e1", HistoryStatus.CLAIMED, "run-1", 1)
    assert before + 60 <= rec.claim_expires_at <= time.time() + 60
    assert before <= rec.updated_at <= time.time()
    assert history.lookup([]) == {}


def test_a_live_claim_excludes_other_owners_but_not_its_own(history: ImportHistoryResource) -> None:
    obj = ref("users/bob.png")
    assert history.claim(obj, "e1", "run-1", 60)
    assert not history.claim(obj, "e1", "run-2", 60)
    assert history.claim(obj, "e1", "run-1", 60)  # the same run resuming
    rec = history.lookup([obj])[obj]
    assert (rec.owner, rec.attempts) == ("run-1", 2)


@pytest.mark.parametrize("final", [HistoryStatus.INDEXED, HistoryStatus.FAILED_PERMANENT])
def test_a_final_outcome_blocks_the_same_etag_only(history: ImportHistoryResource, final: HistoryStatus) -> None:
    obj = ref("users/carol.jpg", "v1")
    assert history.claim(obj, "e1", "run-1", 60)
    history.record(outcome(obj, final, "run-1", user_id="carol", reason="done"))
    assert not history.claim(obj, "e1", "run-1", 60)  # not even its own run: the outcome is final
    assert not history.claim(obj, "e1", "run-2", 60)
    assert history.lookup([obj])[obj].status == final
    assert history.claim(obj, "e2", "run-2", 60)  # new content: a new decision
    rec = history.lookup([obj])[obj]
    assert (rec.status, rec.etag, rec.owner, rec.attempts) == (HistoryStatus.CLAIMED, "e2", "run-2", 2)


def test_a_transient_failure_may_be_claimed_again(history: ImportHistoryResource) -> None:
    obj = ref("users/dan.jpg")
    assert history.claim(obj, "e1", "run-1", 60)
    history.record(outcome(obj, HistoryStatus.FAILED_TRANSIENT, "run-1", reason="http_503"))
    assert history.claim(obj, "e1", "run-2", 60)
    assert history.lookup([obj])[obj].attempts == 2


def test_an_expired_lease_can_be_taken_over_and_the_stale_run_cannot_record(history: ImportHistoryResource) -> None:
    obj = ref("users/erin.jpg")
    assert history.claim(obj, "e1", "run-old", 3.0)  # long enough that a loaded CI machine still sees it held
    assert not history.claim(obj, "e1", "run-new", 60)
    time.sleep(3.2)
    assert history.claim(obj, "e1", "run-new", 60)
    history.record(outcome(obj, HistoryStatus.INDEXED, "run-new", user_id="erin-secret-id"))
    with pytest.raises(ClaimLost) as lost:
        history.record(outcome(obj, HistoryStatus.FAILED_PERMANENT, "run-old", reason="late"))
    assert str(obj) in str(lost.value) and "run-new" in str(lost.value)
    assert "erin-secret-id" not in str(lost.value)  # the user id is never in messages
    rec = history.lookup([obj])[obj]
    assert (rec.status, rec.owner, rec.user_id) == (HistoryStatus.INDEXED, "run-new", "erin-secret-id")


def test_record_without_a_claim_or_with_a_non_final_status_is_refused(history: ImportHistoryResource) -> None:
    obj = ref("users/frank.jpg")
    with pytest.raises(ClaimLost, match="no claim"):
        history.record(outcome(obj, HistoryStatus.INDEXED, "run-1"))
    assert history.lookup([obj]) == {}
    assert history.claim(obj, "e1", "run-1", 60)
    with pytest.raises(HistoryError, match="not 'claimed'"):
        history.record(outcome(obj, HistoryStatus.CLAIMED, "run-1"))
    assert history.lookup([obj])[obj].status == HistoryStatus.CLAIMED


def test_record_round_trips_every_field(history: ImportHistoryResource) -> None:
    keys = [ref("plain.jpg"), ref("dir/a b+c?d=é😀.png", "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"), ref("x/y.jpg", "null")]
    for i, obj in enumerate(keys):
        assert history.claim(obj, f"etag{i}", "run-1", 60)
        history.record(
            outcome(
                obj,
                HistoryStatus.INDEXED,
                "run-1",
                etag=f"etag{i}",
                user_id=f"user{i}",
                reason="SUCCEEDED",
                extra={"gateway": "riv", "http": "200"},
            )
        )
    found = history.lookup(keys)
    assert set(found) == set(keys)
    for i, obj in enumerate(keys):
        rec = found[obj]
        assert (rec.etag, rec.status, rec.user_id, rec.reason, rec.attempts) == (
            f"etag{i}",
            HistoryStatus.INDEXED,
            f"user{i}",
            "SUCCEEDED",
            1,
        )
        assert dict(rec.extra) == {"gateway": "riv", "http": "200"} and rec.claim_expires_at == 0
    # The scan rebuilds refs from the stored key; "null" is S3's null version.
    assert {r.ref for r in history.scan()} == {keys[0], keys[1], ref("x/y.jpg")}
    # A later outcome without a user id drops the stale one.
    assert history.claim(keys[0], "etag-new", "run-2", 60)
    history.record(outcome(keys[0], HistoryStatus.FAILED_PERMANENT, "run-2", etag="etag-new", reason="NoFace"))
    rec = history.lookup([keys[0]])[keys[0]]
    assert (rec.user_id, rec.reason, rec.etag, rec.attempts) == (None, "NoFace", "etag-new", 2)


def test_release_ends_only_the_owners_lease(history: ImportHistoryResource) -> None:
    obj = ref("users/gina.jpg")
    assert not history.release(obj, "run-1")  # nothing to release
    assert history.claim(obj, "e1", "run-1", 60)
    assert not history.release(obj, "run-2")
    assert not history.claim(obj, "e1", "run-2", 60)
    assert history.release(obj, "run-1")
    assert history.claim(obj, "e1", "run-2", 60)
    history.record(outcome(obj, HistoryStatus.INDEXED, "run-2"))
    assert not history.release(obj, "run-2")  # an outcome is not a claim


def test_lookup_batches_many_refs_and_scan_returns_all(history: ImportHistoryResource) -> None:
    # Several BatchGetItem chunks (100).
    count = 520 if isinstance(history, SqliteImportHistory) else 230
    stored = [ref(f"users/{i:04d}.jpg", None if i % 2 else f"v{i}") for i in range(count)]
    for obj in stored:
        assert history.claim(obj, "e", "run-1", 60)
    missing = [ref(f"missing/{i}.jpg") for i in range(90)]
    asked = stored + missing + stored[:50]  # duplicates too: BatchGetItem refuses them per request
    found = history.lookup(asked)
    assert set(found) == set(stored)
    assert all(found[obj].ref == obj for obj in stored)
    assert sorted(r.ref for r in history.scan()) == sorted(stored)


def test_lookup_table_answers_in_columns_once_per_key(history: ImportHistoryResource) -> None:
    indexed, transient, absent = ref("users/a.jpg"), ref("users/b.jpg", "v7"), ref("users/c.jpg")
    for obj in (indexed, transient):
        assert history.claim(obj, "e1", "run-1", 60)
    history.record(outcome(indexed, HistoryStatus.INDEXED, "run-1"))
    history.record(outcome(transient, HistoryStatus.FAILED_TRANSIENT, "run-1", reason="http_503"))
    keys = pa.table(
        {
            "object_uri": [indexed.uri, transient.uri, absent.uri, indexed.uri],
            "version_id": ["null", "v7", "null", "null"],  # a duplicate key is answered once
        }
    )
    answer = history.lookup_table(keys)
    assert answer.schema == HISTORY_LOOKUP_SCHEMA
    assert sorted(answer.to_pylist(), key=lambda row: row["object_uri"]) == [
        {"object_uri": indexed.uri, "version_id": "null", "etag": "e1", "status": "indexed", "reason": ""},
        {
            "object_uri": transient.uri,
            "version_id": "v7",
            "etag": "e1",
            "status": "failed_transient",
            "reason": "http_503",
        },
    ]
    assert history.lookup_table(keys.slice(0, 0)).num_rows == 0


def test_sqlite_lookup_searches_the_primary_key_and_never_scans(tmp_path: Path) -> None:
    """The day's keys are joined on the primary key: a full scan per lookup made a daily run quadratic."""
    store = SqliteImportHistory(db_path=str(tmp_path / "h.db"))
    for i in range(50):
        assert store.claim(ref(f"users/{i}.jpg"), "e", "run-1", 60)
    conn = store._conn()
    conn.execute("ANALYZE")  # statistics must not tempt the planner into a scan either
    assert len(store.lookup([ref("users/3.jpg"), ref("users/nobody.jpg")])) == 1  # creates the keys table
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + SQLITE_LOOKUP_QUERY)]
    assert not any(step.startswith("SCAN") and "import_history" in step or step == "SCAN h" for step in plan), plan
    assert any(step.startswith("SEARCH h USING PRIMARY KEY (object_uri=? AND version_id=?)") for step in plan), plan
    store.close()


def test_scan_columns_reads_only_the_columns_asked_for(history: ImportHistoryResource) -> None:
    done, waiting, claimed = ref("users/done.jpg"), ref("users/waiting.jpg", "v7"), ref("users/claimed.jpg")
    for obj in (done, waiting, claimed):
        assert history.claim(obj, "e1", "run-1", 60)
    history.record(outcome(done, HistoryStatus.INDEXED, "run-1", user_id="someone", updated_at=1000.0))
    history.record(outcome(waiting, HistoryStatus.FAILED_TRANSIENT, "run-1", reason="http_503", updated_at=2000.0))
    batches = list(history.scan_columns(["status", "updated_at", "attempts"], batch_rows=2))
    assert [b.num_rows for b in batches] == [2, 1]  # batch_rows bounds every batch
    table = pa.Table.from_batches(batches)
    assert table.schema.names == ["status", "updated_at", "attempts"]  # nothing else: no keys, no user ids
    rows = sorted(table.to_pylist(), key=lambda r: r["status"])
    assert [(r["status"], r["attempts"]) for r in rows] == [("claimed", 1), ("failed_transient", 1), ("indexed", 1)]
    assert [r["updated_at"] for r in rows][1:] == [2000.0, 1000.0]
    with pytest.raises(HistoryError, match="scan_columns takes columns"):
        next(history.scan_columns(["user_id"]))


def test_item_size_is_checked_before_writing(history: ImportHistoryResource) -> None:
    obj = ref("users/huge.jpg")
    assert history.claim(obj, "e1", "run-1", 60)
    base = outcome(obj, HistoryStatus.FAILED_PERMANENT, "run-1", user_id="u", reason="")
    room = MAX_ITEM_BYTES - record_item_size(base)
    with pytest.raises(HistoryError) as too_big:
        history.record(outcome(obj, HistoryStatus.FAILED_PERMANENT, "run-1", user_id="u", reason="r" * (room + 1)))
    assert str(obj) in str(too_big.value) and str(MAX_ITEM_BYTES) in str(too_big.value)
    # UTF-8 bytes count, not characters: "é" is 2 bytes.
    with pytest.raises(HistoryError, match="item limit"):
        history.record(outcome(obj, HistoryStatus.FAILED_PERMANENT, "run-1", extra={"note": "é" * (room // 2)}))
    assert history.lookup([obj])[obj].status == HistoryStatus.CLAIMED  # nothing was written
    exact = outcome(obj, HistoryStatus.FAILED_PERMANENT, "run-1", user_id="u", reason="r" * room)
    assert record_item_size(exact) == MAX_ITEM_BYTES
    history.record(exact)
    assert len(history.lookup([obj])[obj].reason) == room


def test_an_over_long_key_is_refused_before_writing(history: ImportHistoryResource) -> None:
    obj = ref("k" * 2100)  # past DynamoDB's 2048-byte partition key
    with pytest.raises(HistoryError, match="partition key"):
        history.claim(obj, "e1", "run-1", 60)
    assert history.lookup([obj]) == {}


def test_racing_threads_exactly_one_claim_wins(history: ImportHistoryResource, monkeypatch: pytest.MonkeyPatch) -> None:
    if isinstance(history, DynamoImportHistory):
        # DynamoDB applies a conditional write atomically; moto checks and writes without a lock.
        # Give moto that one guarantee, nothing more: a claim that read first and wrote after
        # (two requests) would still lose the race here.
        from moto.dynamodb.models import DynamoDBBackend

        lock, update_item = threading.Lock(), DynamoDBBackend.update_item

        def atomic_update_item(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            with lock:
                return update_item(self, *args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, "update_item", atomic_update_item)
    objs = [ref(f"race/{i}.jpg") for i in range(15)]
    threads_n = 6
    barrier = threading.Barrier(threads_n)
    wins: dict[ObjectRef, list[str]] = {obj: [] for obj in objs}
    errors: list[BaseException] = []

    def contend(owner: str) -> None:
        try:
            barrier.wait()
            for obj in objs:
                if history.claim(obj, "e1", owner, 60):
                    wins[obj].append(owner)  # list.append is atomic under the GIL
        except BaseException as error:  # surfaced below: a thread's failure must fail the test
            errors.append(error)

    threads = [threading.Thread(target=contend, args=(f"run-{n}",)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(len(owners) == 1 for owners in wins.values()), wins
    stored = history.lookup(objs)
    assert all(stored[obj].owner == wins[obj][0] and stored[obj].attempts == 1 for obj in objs)


# ---------------------------------------------------------------- SQLite only


def _claim_in_process(db_path: str, owner: str, keys: list[str], barrier, results) -> None:  # type: ignore[no-untyped-def]
    history = SqliteImportHistory(db_path=db_path)
    barrier.wait()
    results.put((owner, [key for key in keys if history.claim(ref(key), "e1", owner, 60)]))
    history.close()


def test_sqlite_racing_processes_exactly_one_claim_wins(tmp_path: Path) -> None:
    db_path = str(tmp_path / "shared.db")  # not created yet: both processes create the schema too
    keys = [f"race/{i}.jpg" for i in range(40)]
    ctx = multiprocessing.get_context("spawn")  # no fork of a threaded pytest process
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_process, args=(db_path, f"proc-{n}", keys, barrier, results)) for n in range(2)
    ]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    won = outcomes["proc-0"] + outcomes["proc-1"]
    assert sorted(won) == sorted(keys)  # every key claimed once, none twice
    stored = SqliteImportHistory(db_path=db_path)
    assert {r.ref.key: r.owner for r in stored.scan()} == {
        key: owner for owner, mine in outcomes.items() for key in mine
    }
    stored.close()


def test_sqlite_uses_wal_and_a_connection_per_thread(tmp_path: Path) -> None:
    store = SqliteImportHistory(db_path=str(tmp_path / "h.db"))
    seen: list[int] = []
    worker = threading.Thread(target=lambda: seen.append(id(store._conn())))
    worker.start()
    worker.join()
    seen.append(id(store._conn()))
    assert len(set(seen)) == 2 and store._conn() is store._conn()
    with sqlite3.connect(tmp_path / "h.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_dagster_binds_an_implementation_to_the_base_annotation(tmp_path: Path) -> None:
    store = SqliteImportHistory(db_path=str(tmp_path / "h.db"))
    in_run: list[SqliteImportHistory] = []

    @dg.asset
    def claimed(history: ImportHistoryResource) -> dg.MaterializeResult:
        ok = history.claim(ref("dg.jpg"), "e1", "run-dg", 60)
        assert isinstance(history, SqliteImportHistory) and len(history._threads.connections) == 1
        in_run.append(history)  # Dagster hands the asset its own copy of the resource
        return dg.MaterializeResult(metadata={"claimed": ok})

    result = dg.materialize([claimed], resources={"history": store})
    assert result.success
    mats = result.asset_materializations_for_node("claimed")
    assert mats[0].metadata["claimed"].value is True
    assert len(in_run) == 1 and in_run[0]._threads.connections == []  # teardown closed every connection
    assert SqliteImportHistory(db_path=str(tmp_path / "h.db")).lookup([ref("dg.jpg")])[ref("dg.jpg")].owner == "run-dg"


# ---------------------------------------------------------------- DynamoDB only


def test_dynamo_over_http_with_endpoint_url(aws_env: None) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        arn = create_history_table(TABLE, AwsClients(region_name=REGION, endpoint_url=endpoint))
        assert arn.endswith(f":table/{TABLE}")
        history = DynamoImportHistory(table_name=TABLE, aws=AwsClients(region_name=REGION, endpoint_url=endpoint))
        objs = [ref(f"http/{i}.jpg") for i in range(130)]
        for obj in objs:
            assert history.claim(obj, "e1", "run-1", 60)
        assert not history.claim(objs[0], "e1", "run-2", 60)
        history.record(outcome(objs[0], HistoryStatus.INDEXED, "run-1", user_id="u0"))
        found = history.lookup(objs)
        assert len(found) == 130 and found[objs[0]].status == HistoryStatus.INDEXED
        assert len(list(history.scan())) == 130
        # The same table, seen from a client bound to the server: the resource really used the endpoint.
        raw = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
        assert raw.describe_table(TableName=TABLE)["Table"]["ItemCount"] == 130
    finally:
        server.stop()


def test_create_history_table_is_idempotent_and_rejects_a_wrong_schema(aws_env: None) -> None:
    with mock_aws():
        first = create_history_table(TABLE, AwsClients(region_name=REGION))
        assert create_history_table(TABLE, AwsClients(region_name=REGION)) == first
        raw = boto3.client("dynamodb", region_name=REGION)
        table = raw.describe_table(TableName=TABLE)["Table"]
        assert table["TableStatus"] == "ACTIVE"
        assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {
            ("object_uri", "HASH"),
            ("version_id", "RANGE"),
        }
        raw.create_table(
            TableName="someone-else",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        with pytest.raises(HistoryError, match=r"someone-else exists with key schema \[id \(HASH, S\)\]"):
            create_history_table("someone-else", AwsClients(region_name=REGION))
        with pytest.raises(HistoryError, match="billing_mode"):
            create_history_table("t2", AwsClients(region_name=REGION), billing_mode="ON_DEMAND")
        assert create_history_table("t3", AwsClients(region_name=REGION), billing_mode="PROVISIONED").endswith("/t3")


def test_dynamo_missing_table_is_a_clear_error(aws_env: None) -> None:
    with mock_aws():
        history = DynamoImportHistory(table_name="not-there", aws=AwsClients(region_name=REGION))
        with pytest.raises(HistoryError, match="not-there.*create-history-table"):
            history.claim(ref("a.jpg"), "e1", "run-1", 60)
        with pytest.raises(HistoryError, match="not-there"):
            history.lookup([ref("a.jpg")])


def test_dynamo_lookup_retries_unprocessed_keys(aws_env: None) -> None:
    # ~45 near-limit items make one BatchGetItem answer pass 16 MB: DynamoDB (and moto) then
    # return part of the keys as UnprocessedKeys, which lookup must fetch again.
    with mock_aws():
        create_history_table(TABLE, AwsClients(region_name=REGION))
        history = DynamoImportHistory(table_name=TABLE, aws=AwsClients(region_name=REGION))
        objs = [ref(f"big/{i}.jpg") for i in range(45)]
        for obj in objs:
            assert history.claim(obj, "e1", "run-1", 60)
            filler = MAX_ITEM_BYTES - record_item_size(outcome(obj, HistoryStatus.FAILED_PERMANENT, "run-1"))
            history.record(outcome(obj, HistoryStatus.FAILED_PERMANENT, "run-1", reason="r" * filler))
        raw = boto3.client("dynamodb", region_name=REGION)
        keys = [{"object_uri": {"S": o.uri}, "version_id": {"S": "null"}} for o in objs]
        assert raw.batch_get_item(RequestItems={TABLE: {"Keys": keys}})["UnprocessedKeys"]  # the premise
        found = history.lookup(objs)
        assert set(found) == set(objs)


class _ThrottlingDynamo(http.server.BaseHTTPRequestHandler):
    """A DynamoDB endpoint that throttles the first two requests, then accepts an UpdateItem."""

    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(self.headers["X-Amz-Target"])
        if len(self.seen) <= 2:
            status, body = (
                400,
                {
                    "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                    "message": "Rate of requests exceeds the allowed throughput.",
                },
            )
        else:
            status, body = 200, {}
        answer_aws_json(self, status, body)

    def log_message(self, *args: object) -> None:
        pass


def test_dynamo_throttling_is_retried_by_the_client(aws_env: None) -> None:
    _ThrottlingDynamo.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ThrottlingDynamo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        history = DynamoImportHistory(table_name=TABLE, aws=AwsClients(region_name=REGION, endpoint_url=endpoint))
        assert history.claim(ref("throttled.jpg"), "e1", "run-1", 60)
        assert _ThrottlingDynamo.seen == ["DynamoDB_20120810.UpdateItem"] * 3
    finally:
        server.shutdown()
        thread.join()


def test_dynamo_scan_and_batch_get_give_the_same_final_outcomes(aws_env: None) -> None:
    """Qualification's question, answered key by key (BatchGetItem) or from one parallel Scan."""
    with mock_aws():
        create_history_table(TABLE, AwsClients(region_name=REGION))
        history = DynamoImportHistory(table_name=TABLE, aws=AwsClients(region_name=REGION), scan_segments=3)
        expected = set()
        for i in range(240):
            obj = ref(f"users/{i:03d}.jpg", None if i % 3 else f"v{i}")
            assert history.claim(obj, f"e{i}", "run-1", 60)
            kind = i % 4
            if kind == 0:
                history.record(outcome(obj, HistoryStatus.INDEXED, "run-1", etag=f"e{i}"))
                expected.add((obj.uri, obj.version_id or "null", f"e{i}", "indexed", ""))
            elif kind == 1:
                history.record(
                    outcome(obj, HistoryStatus.FAILED_PERMANENT, "run-1", etag=f"e{i}", reason="NoFaceDetected")
                )
                expected.add((obj.uri, obj.version_id or "null", f"e{i}", "failed_permanent", "NoFaceDetected"))
            elif kind == 2:
                history.record(outcome(obj, HistoryStatus.FAILED_TRANSIENT, "run-1", etag=f"e{i}"))
            # kind 3: a live claim, not final
        asked = [(ref(f"users/{i:03d}.jpg").uri, "null" if i % 3 else f"v{i}", f"e{i}") for i in range(240)]
        asked += [
            (ref(f"users/{i:03d}.jpg").uri, "null" if i % 3 else f"v{i}", "another-etag") for i in range(0, 240, 4)
        ]
        asked += [(ref(f"absent/{i}.jpg").uri, "null", "e") for i in range(30)]
        objects = pa.table(dict(zip(["object_uri", "version_id", "etag"], map(list, zip(*asked)))))

        assert history.expect_lookups(2) == "batch_get"  # 2 keys: cheaper than reading 240 items
        by_key = history.final_outcomes(objects)
        gets = history.read_counts()
        assert gets["requests"] == 3 and gets["read_units"] == 270  # 270 distinct keys, 100 a request

        assert history.expect_lookups(len(asked)) == "scan"  # 330 keys cost more than 240 items of ~300 B
        scanned = history.final_outcomes(objects)
        scans = history.read_counts()
        assert scans["requests"] - gets["requests"] >= 3  # a page per segment at least
        assert 0 < scans["read_units"] - gets["read_units"] < len(asked) / 4

        rows = lambda t: {tuple(r.values()) for r in t.to_pylist()}  # noqa: E731
        assert rows(by_key) == rows(scanned) == expected
