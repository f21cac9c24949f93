"""The embedded identity registry: users in SQLite with the RIV rules, never the image bytes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Optional

import dagster as dg
from pydantic import Field, PrivateAttr

from ...core.model import GatewayResult, ObjectRef
from ...core.rules.limits import DYNAMODB_ITEM_LIMIT, dynamodb_item_size
from ...core.rules.riv_protocol import properties_problem, result_of_answer
from ...core.rules.user_ids import RIV_USER_ID_PATTERN
from ..sqlite_threads import ThreadConnections, use_wal
from .base import GatewayResource, _checked_input, _no_pace, _Rejected

_SCHEMA = """
CREATE TABLE IF NOT EXISTS faces (
    face_id           TEXT NOT NULL,         -- RIV's FaceId (a UUID); rows are keyed by SQLite's rowid
    user_key          TEXT NOT NULL,         -- User::<user id lower-cased>, as RIV keys it
    external_image_id TEXT NOT NULL,         -- the lower-cased id, as RIV passes it to IndexFaces
    image_sha256      TEXT NOT NULL,         -- stands in for the face: one image, one face
    image_size        INTEGER NOT NULL,
    image_format      TEXT NOT NULL,
    image_width       INTEGER NOT NULL,
    image_height      INTEGER NOT NULL,
    properties_json   TEXT NOT NULL,
    registered_at     TEXT NOT NULL          -- ISO-8601 UTC
);
CREATE INDEX IF NOT EXISTS faces_by_user ON faces (user_key);
CREATE INDEX IF NOT EXISTS faces_by_image ON faces (image_sha256);
CREATE TABLE IF NOT EXISTS attempts (user_key TEXT PRIMARY KEY, attempts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO stats (name, value) VALUES ('register_calls', 0);
"""
_RIV_ID = re.compile(RIV_USER_ID_PATTERN)
_LOCKED_ATTEMPTS = 3
_ENDPOINT = "the embedded registry"


def _failed(error: str, message: str) -> dict[str, Any]:
    """A FAILED answer as RIV gives it: the Lambda error's class name, and Lambda's JSON as the cause."""
    cause = json.dumps({"errorMessage": message, "errorType": error, "stackTrace": []})
    return {"status": "FAILED", "error": error, "cause": cause}


class LocalRegistryGateway(GatewayResource):
    """The embedded identity registry, answering as RIV's register workflow does: users in SQLite
    (WAL), safe from threads and processes.

    It stores each face's image SHA-256 and dimensions, never the bytes. An identical image stands
    in for Rekognition's "same face" (the real gateway compares faces): the same face for another
    id is `UserAlreadyExists`; for the same id, as RIV does, it is stored again as a second face.
    """

    db_path: str = Field(description="SQLite file of the registry (created if missing)")
    busy_timeout_seconds: float = Field(
        default=30.0, description="How long a call waits for another writer before answering transient"
    )

    _threads: ThreadConnections = PrivateAttr(default_factory=ThreadConnections)

    def _connect(self) -> sqlite3.Connection:
        return self._threads.get(self._open_connection)

    def _open_connection(self) -> sqlite3.Connection:
        """`timeout` is SQLite's busy_timeout; isolation_level=None lets us take the write lock
        up front with BEGIN IMMEDIATE."""
        parent = os.path.dirname(os.path.abspath(self.db_path))
        os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(
            self.db_path, timeout=self.busy_timeout_seconds, isolation_level=None, check_same_thread=False
        )
        try:
            use_wal(conn, self.busy_timeout_seconds)
            # WAL + NORMAL: a committed registration survives a killed process; a power cut may
            # lose the last ones (their history records are then claims that expire and retry).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)  # idempotent; concurrent creators are serialised by SQLite
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Close every connection this resource opened in this process (any thread)."""
        self._threads.close()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def register(
        self,
        user_id: str,
        image: Optional[bytes],
        properties: Mapping[str, str],
        pace: Callable[[], object] = _no_pace,
        *,
        source: Optional[ObjectRef] = None,
    ) -> GatewayResult:
        # The checks a client makes before calling (as the HTTP gateway does): nothing reaches the registry.
        try:
            info, props = _checked_input(user_id, image, properties, self.user_id_pattern)
        except _Rejected as exc:
            return GatewayResult.permanent(exc.reason)
        assert info is not None and image is not None  # the embedded registry always takes the bytes
        problem = properties_problem(props)  # what RIV's API Gateway cannot pass on
        if problem:
            return GatewayResult.permanent(problem)
        face = {
            "image_sha256": hashlib.sha256(image).hexdigest(),
            "image_size": info.size,
            "image_format": info.format,
            "image_width": info.width,
            "image_height": info.height,
            "properties_json": json.dumps(props, ensure_ascii=False, sort_keys=True, separators=(",", ":")),
        }
        pace()  # the call reaches the registry now
        for attempt in range(_LOCKED_ATTEMPTS):
            try:  # sent lower-cased, as the HTTP gateway does
                answer = self._workflow(self._connect(), user_id.lower(), face)
                break
            except sqlite3.OperationalError as exc:
                # SQLite may answer "locked" at once, without its busy wait (a WAL file being set up
                # by another connection): the transaction was rolled back, so it is tried again.
                if "locked" in str(exc) and attempt + 1 < _LOCKED_ATTEMPTS:
                    time.sleep(0.05 * (attempt + 1))
                    continue
                return GatewayResult.transient(f"local_registry_unavailable: {type(exc).__name__}: {exc}")
            except sqlite3.Error as exc:  # disk full, ...: may pass next time
                return GatewayResult.transient(f"local_registry_unavailable: {type(exc).__name__}: {exc}")
        return result_of_answer(answer, _ENDPOINT)

    @staticmethod
    def _workflow(conn: sqlite3.Connection, user_id: str, face: Mapping[str, Any]) -> dict[str, Any]:
        """RIV's register workflow on one request: search-faces, then index-faces and the face record."""
        user_key = f"User::{user_id.lower()}"
        with conn:  # commits, or rolls back on any exception
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: search-then-index is atomic
            conn.execute("UPDATE stats SET value = value + 1 WHERE name = 'register_calls'")
            conn.execute(
                "INSERT INTO attempts (user_key, attempts) VALUES (?, 1)"
                " ON CONFLICT (user_key) DO UPDATE SET attempts = attempts + 1",
                (user_key,),
            )
            # search-faces: a match is the caller's own face only when the id AS SENT equals the
            # stored (lower-cased) ExternalImageId, so a mixed-case id matching its own face fails.
            owners = {
                row[0]
                for row in conn.execute(
                    "SELECT external_image_id FROM faces WHERE image_sha256 = ?", (face["image_sha256"],)
                )
            }
            if owners and owners != {user_id}:
                return _failed("UserAlreadyExists", "the face matches a face registered for another user id")
            # index-faces: the lower-cased id becomes Rekognition's ExternalImageId.
            external_id = user_id.lower()
            if not _RIV_ID.fullmatch(external_id) or len(external_id) > 255:
                return _failed(
                    "ClientError",
                    "An error occurred (ValidationException) when calling the IndexFaces operation: ExternalImageId"
                    " failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_.\\-:]+",
                )
            registered_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            face_id = str(uuid.uuid4())
            item = {"PartitionKey": user_key, "SortKey": f"Face::{face_id}", "RegisteredAt": registered_at, **face}
            size = dynamodb_item_size(item)
            if size > DYNAMODB_ITEM_LIMIT:
                return _failed(
                    "ClientError",
                    "An error occurred (ValidationException) when calling the PutItem operation: Item size has"
                    f" exceeded the maximum allowed size ({size} bytes > {DYNAMODB_ITEM_LIMIT})",
                )
            conn.execute(
                "INSERT INTO faces (face_id, user_key, external_image_id, image_sha256, image_size, image_format,"
                " image_width, image_height, properties_json, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    face_id,
                    user_key,
                    external_id,
                    face["image_sha256"],
                    face["image_size"],
                    face["image_format"],
                    face["image_width"],
                    face["image_height"],
                    face["properties_json"],
                    registered_at,
                ),
            )
            output = {"UserId": external_id, "ImageId": face_id, "Status": "Registered"}
            return {"status": "SUCCEEDED", "output": json.dumps(output)}

    def user_exists(self, user_id: str) -> Optional[bool]:
        """RIV's check-userid, asked as the HTTP gateway asks it: for the lower-cased id."""
        row = (
            self._connect()
            .execute("SELECT 1 FROM faces WHERE user_key = ? LIMIT 1", (f"User::{user_id.lower()}",))
            .fetchone()
        )
        return row is not None

    def users(self) -> list[dict[str, Any]]:
        """Registered users (no properties, no image): user_id (lower-cased), image_sha256 (of the
        first face), registered_at (the first face's), registrations (faces stored), attempts;
        oldest first."""
        rows = (
            self._connect()
            .execute(
                "SELECT f.external_image_id, f.image_sha256, f.registered_at, n.faces, COALESCE(a.attempts, 0)"
                # The first face is the first row: two faces may share a millisecond, never a rowid.
                " FROM (SELECT user_key, COUNT(*) AS faces, MIN(rowid) AS first FROM faces GROUP BY user_key) AS n"
                " JOIN faces AS f ON f.rowid = n.first"
                " LEFT JOIN attempts AS a ON a.user_key = n.user_key ORDER BY f.rowid"
            )
            .fetchall()
        )
        keys = ("user_id", "image_sha256", "registered_at", "registrations", "attempts")
        return [dict(zip(keys, r)) for r in rows]

    def register_calls(self) -> int:
        """How many times `register` reached the registry (every process, every outcome)."""
        return int(self._connect().execute("SELECT value FROM stats WHERE name = 'register_calls'").fetchone()[0])
