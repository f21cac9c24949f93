"""The embedded import history: SQLite in WAL mode (synchronous=NORMAL), a connection per thread."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from typing import Iterable, Iterator, Optional, Sequence

import dagster as dg
import pyarrow as pa
from pydantic import Field, PrivateAttr

from ...core.errors import HistoryError
from ...core.model import HistoryRecord, HistoryStatus, ObjectRef
from ..sqlite_threads import ThreadConnections, is_busy, use_wal
from .base import (
    CHANGES_SCHEMA,
    LOOKUP_SCHEMA,
    ClaimLost,
    ImportHistoryResource,
    _check_item,
    _claim_allowed,
    _claim_attrs,
    _outcome_attrs,
    _record_from_row,
    _summary_schema,
    _unique_keys,
    _version_key,
    correction_attrs,
    reopened_reason,
)

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
    correction TEXT NOT NULL DEFAULT '',
    corrected_by TEXT NOT NULL DEFAULT '',
    corrected_at REAL NOT NULL DEFAULT 0,
    correction_why TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (object_uri, version_id)
) WITHOUT ROWID
"""
# Added after the first release: a history file from before gets them on first use.
_LATER_COLUMNS = {
    "correction": "TEXT NOT NULL DEFAULT ''",
    "corrected_by": "TEXT NOT NULL DEFAULT ''",
    "corrected_at": "REAL NOT NULL DEFAULT 0",
    "correction_why": "TEXT NOT NULL DEFAULT ''",
}
# The change log: a final record (indexed, failed_permanent) that changes or goes, whoever does
# it (a correction, another run, someone with the sqlite3 shell), leaves its key here, so the
# daily shortcut (the previous date's outcomes) can tell which of them no longer hold.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_FINAL = "('indexed', 'failed_permanent')"
_CHANGE_LOG = [
    "CREATE TABLE IF NOT EXISTS history_changes (changed_at REAL NOT NULL, object_uri TEXT NOT NULL, version_id TEXT"
    " NOT NULL)",
    "CREATE INDEX IF NOT EXISTS history_changes_at ON history_changes (changed_at)",
    "CREATE TABLE IF NOT EXISTS history_meta (name TEXT PRIMARY KEY, value REAL NOT NULL)",
    f"INSERT OR IGNORE INTO history_meta VALUES ('changes_logged_since', {_NOW})",
    f"""CREATE TRIGGER IF NOT EXISTS history_final_deleted AFTER DELETE ON import_history
        WHEN OLD.status IN {_FINAL}
        BEGIN INSERT INTO history_changes VALUES ({_NOW}, OLD.object_uri, OLD.version_id); END""",
    f"""CREATE TRIGGER IF NOT EXISTS history_final_changed AFTER UPDATE OF status, etag ON import_history
        WHEN OLD.status IN {_FINAL} AND (NEW.status <> OLD.status OR NEW.etag <> OLD.etag)
        BEGIN INSERT INTO history_changes VALUES ({_NOW}, OLD.object_uri, OLD.version_id); END""",
]
_COLUMNS = (
    "object_uri, version_id, etag, status, user_id, reason, attempts, owner, updated_at, claim_expires_at, extra,"
    " correction, corrected_by, corrected_at, correction_why"
)
# The day's keys go into a per-connection temporary table, joined on the primary key: one
# index search per key (`(a, b) IN (VALUES ...)` made SQLite scan the whole table per chunk).
# CROSS JOIN fixes the loop order: SQLite's planner, without statistics on the temp table,
# may otherwise scan import_history and search the keys.
_LOOKUP_KEYS = (
    "CREATE TEMP TABLE IF NOT EXISTS lookup_keys"
    " (object_uri TEXT NOT NULL, version_id TEXT NOT NULL, PRIMARY KEY (object_uri, version_id)) WITHOUT ROWID"
)
LOOKUP_QUERY = (
    f"SELECT {', '.join('h.' + c for c in _COLUMNS.split(', '))} FROM temp.lookup_keys k"
    " CROSS JOIN import_history h ON h.object_uri = k.object_uri AND h.version_id = k.version_id"
)


class SqliteImportHistory(ImportHistoryResource):
    """The embedded import history: one SQLite file (WAL), shared by threads and processes."""

    db_path: str = Field(description="Path of the SQLite file; created with its schema on first use.")
    busy_timeout_ms: int = Field(default=30_000, description="How long a writer waits for another's lock.")

    _threads: ThreadConnections = PrivateAttr(default_factory=ThreadConnections)

    def _conn(self) -> sqlite3.Connection:
        return self._threads.get(self._open_connection)

    def _open_connection(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.db_path))
        os.makedirs(directory, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves; check_same_thread=False only so
        # close() may run from another thread at teardown.
        conn = sqlite3.connect(
            self.db_path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        # WAL + NORMAL: a commit is in the WAL file before COMMIT returns, so a killed process
        # loses nothing; only a power cut can lose the commits since the last checkpoint.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        self._prepare(conn)
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL and create the schema, retrying both within the busy timeout
        (see `use_wal`)."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                use_wal(conn, max(0.0, deadline - time.monotonic()))
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(_SCHEMA)
                    have = {row[1] for row in conn.execute("PRAGMA table_info(import_history)")}
                    for name, kind in _LATER_COLUMNS.items():
                        if name not in have:
                            conn.execute(f"ALTER TABLE import_history ADD COLUMN {name} {kind}")
                    for statement in _CHANGE_LOG:
                        conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                return
            except sqlite3.OperationalError as error:
                if not is_busy(error) or time.monotonic() > deadline:
                    raise HistoryError(f"{self.db_path}: cannot prepare the import history ({error})") from error
                time.sleep(random.uniform(0.01, 0.05))

    def close(self) -> None:
        """Close every connection this resource opened in this process (any thread)."""
        self._threads.close()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def _lookup_rows(self, keys: Iterable[tuple[str, str]]) -> list[sqlite3.Row]:
        """The records of these (object_uri, version_id) keys, each once, in one read snapshot."""
        conn = self._conn()
        conn.execute(_LOOKUP_KEYS)
        conn.execute("BEGIN")  # the temp rows are dropped by the ROLLBACK; the main file is only read
        try:
            conn.executemany("INSERT OR IGNORE INTO temp.lookup_keys VALUES (?, ?)", keys)
            return conn.execute(LOOKUP_QUERY).fetchall()
        finally:
            conn.execute("ROLLBACK")

    def lookup(self, refs: Sequence[ObjectRef]) -> dict[ObjectRef, HistoryRecord]:
        wanted = _unique_keys(refs)
        found: dict[ObjectRef, HistoryRecord] = {}
        if len(wanted) == 1:  # one object, as indexing asks before each claim: a primary-key read
            rows = self._conn().execute(
                f"SELECT {_COLUMNS} FROM import_history WHERE object_uri = ? AND version_id = ?", next(iter(wanted))
            )
        else:
            rows = self._lookup_rows(wanted) if wanted else []
        for row in rows:
            ref = wanted[(row["object_uri"], row["version_id"])]
            found[ref] = _record_from_row(row, ref)
        return found

    def lookup_table(self, keys: pa.Table) -> pa.Table:
        if not keys.num_rows:
            return LOOKUP_SCHEMA.empty_table()
        pairs = zip(keys.column("object_uri").to_pylist(), keys.column("version_id").to_pylist())
        rows = self._lookup_rows(pairs)
        return pa.Table.from_pydict(
            {name: [row[name] for row in rows] for name in LOOKUP_SCHEMA.names}, schema=LOOKUP_SCHEMA
        )

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
        return self._set_own_lease(ref, owner, 0.0)

    def renew(self, ref: ObjectRef, owner: str, lease_seconds: float) -> bool:
        return self._set_own_lease(ref, owner, time.time() + lease_seconds)

    def _set_own_lease(self, ref: ObjectRef, owner: str, expires_at: float) -> bool:
        cursor = self._conn().execute(
            """UPDATE import_history SET claim_expires_at = ?, updated_at = ?
               WHERE object_uri = ? AND version_id = ? AND owner = ? AND status = ?""",
            (expires_at, time.time(), ref.uri, _version_key(ref), owner, HistoryStatus.CLAIMED.value),
        )
        return cursor.rowcount == 1

    def reopen(self, record: HistoryRecord, correction: str, by: str, why: str, at: float) -> bool:
        cursor = self._conn().execute(
            """UPDATE import_history SET status = :reopened, reason = :reason, claim_expires_at = 0, updated_at = :at,
                   correction = :correction, corrected_by = :corrected_by, corrected_at = :corrected_at,
                   correction_why = :correction_why
               WHERE object_uri = :object_uri AND version_id = :version_id AND status = :status AND etag = :etag""",
            {
                **correction_attrs(correction, by, why, at),
                "reopened": HistoryStatus.REOPENED.value,
                "reason": reopened_reason(correction, record),
                "at": at,
                "object_uri": record.ref.uri,
                "version_id": _version_key(record.ref),
                "status": record.status.value,
                "etag": record.etag,
            },
        )
        return cursor.rowcount == 1

    def changes_since(self, since: float) -> Optional[pa.Table]:
        conn = self._conn()
        started = conn.execute("SELECT value FROM history_meta WHERE name = 'changes_logged_since'").fetchone()
        if started is None or since < started[0]:
            return None
        rows = conn.execute(
            "SELECT DISTINCT object_uri, version_id FROM history_changes WHERE changed_at >= ?", (since,)
        ).fetchall()
        return pa.Table.from_pylist([dict(row) for row in rows], schema=CHANGES_SCHEMA)

    def records_of(self, object_uri: str) -> list[HistoryRecord]:
        rows = self._conn().execute(f"SELECT {_COLUMNS} FROM import_history WHERE object_uri = ?", (object_uri,))
        return [_record_from_row(row) for row in rows.fetchall()]

    def records_of_user(self, user_id: str) -> list[HistoryRecord]:
        rows = self._conn().execute(f"SELECT {_COLUMNS} FROM import_history WHERE user_id = ?", (user_id,))
        return [_record_from_row(row) for row in rows.fetchall()]

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

    def scan_columns(self, columns: Sequence[str], batch_rows: int = 100_000) -> Iterator[pa.RecordBatch]:
        schema = _summary_schema(columns)  # names checked against a fixed list: safe to interpolate
        # A connection of its own: the read transaction lasts the whole scan (one consistent view)
        # without holding this thread's connection, which claims and records use.
        conn = sqlite3.connect(
            f"file:{os.path.abspath(self.db_path)}?mode=ro", uri=True, timeout=self.busy_timeout_ms / 1000
        )
        try:
            cursor = conn.execute(f"SELECT {', '.join(schema.names)} FROM import_history")
            while rows := cursor.fetchmany(batch_rows):
                yield pa.RecordBatch.from_arrays(
                    [pa.array(values, type=f.type) for values, f in zip(zip(*rows), schema)], schema=schema
                )
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return  # nothing recorded yet
            raise HistoryError(f"{self.db_path}: cannot read the import history ({error})") from error
        finally:
            conn.close()
