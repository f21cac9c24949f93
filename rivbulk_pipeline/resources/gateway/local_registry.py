"""The embedded identity registry: users in SQLite with the RIV rules, never the image bytes."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Optional

import dagster as dg
from pydantic import Field, PrivateAttr

from ...core.model import GatewayResult
from ...core.rules.images import external_image_id, validate_user_id

from ...core.rules.limits import DYNAMODB_ITEM_LIMIT, dynamodb_item_size
from ..sqlite_threads import ThreadConnections
from .base import (
    GatewayResource,
    _Rejected,
    _checked_input,
    _no_pace,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_key          TEXT PRIMARY KEY,      -- User::<user_id lower-cased>, as RIV keys it
    user_id           TEXT NOT NULL,
    external_image_id TEXT NOT NULL,
    image_sha256      TEXT NOT NULL UNIQUE,  -- one image, one user (RIV: UserAlreadyExists)
    image_size        INTEGER NOT NULL,
    image_format      TEXT NOT NULL,
    image_width       INTEGER NOT NULL,
    image_height      INTEGER NOT NULL,
    properties_json   TEXT NOT NULL,
    registered_at     TEXT NOT NULL,         -- ISO-8601 UTC
    registrations     INTEGER NOT NULL,      -- set to 1 by the first registration, never bumped
    attempts          INTEGER NOT NULL       -- every register call for this user
);
CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO stats (name, value) VALUES ('register_calls', 0);
"""

class LocalRegistryGateway(GatewayResource):
    """The embedded identity registry: users in SQLite (WAL), safe from threads and processes.

    It stores the image's SHA-256 and dimensions, never its bytes. An identical image stands
    in for Rekognition's "same face" (the real gateway compares faces).
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
        conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout_seconds, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
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
        self, user_id: str, image: bytes, properties: Mapping[str, str], pace: Callable[[], object] = _no_pace
    ) -> GatewayResult:
        problem: Optional[str] = None
        row: dict[str, Any] = {}
        try:
            info, props = _checked_input(user_id, image, properties)
            row = {
                "UserKey": f"User::{user_id.lower()}",
                "UserId": user_id,
                "ExternalImageId": external_image_id(user_id),
                "ImageSha256": hashlib.sha256(image).hexdigest(),
                "ImageSize": info.size,
                "ImageFormat": info.format,
                "ImageWidth": info.width,
                "ImageHeight": info.height,
                "Properties": json.dumps(props, ensure_ascii=False, sort_keys=True, separators=(",", ":")),
                "RegisteredAt": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "Registrations": 1,
                "Attempts": 1,
            }
            size = dynamodb_item_size(row)
            if size > DYNAMODB_ITEM_LIMIT:
                raise _Rejected(f"RecordTooLarge: the user record is {size} bytes > {DYNAMODB_ITEM_LIMIT}")
        except _Rejected as exc:
            problem = exc.reason
        # A valid id still counts an attempt on its user, even when this call's input is bad.
        user_key = f"User::{user_id.lower()}" if validate_user_id(user_id) is None else None
        pace()  # the call reaches the registry now
        try:
            return self._apply(self._connect(), user_key, problem, row)
        except sqlite3.Error as exc:  # locked past busy_timeout, disk full, ...: may pass next time
            return GatewayResult.transient(f"local registry unavailable: {type(exc).__name__}: {exc}")

    @staticmethod
    def _apply(
        conn: sqlite3.Connection, user_key: Optional[str], problem: Optional[str], row: Mapping[str, Any]
    ) -> GatewayResult:
        with conn:  # commits, or rolls back on any exception
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: check-then-insert is atomic
            conn.execute("UPDATE stats SET value = value + 1 WHERE name = 'register_calls'")
            if user_key is not None:
                conn.execute("UPDATE users SET attempts = attempts + 1 WHERE user_key = ?", (user_key,))
            if problem is not None:
                return GatewayResult.permanent(problem)
            existing = conn.execute("SELECT image_sha256 FROM users WHERE user_key = ?", (user_key,)).fetchone()
            if existing is not None:
                if existing[0] == row["ImageSha256"]:
                    return GatewayResult.succeeded("SUCCEEDED (already registered with this image)")
                return GatewayResult.permanent("UserAlreadyRegistered: a different image is registered for this user")
            owner = conn.execute("SELECT 1 FROM users WHERE image_sha256 = ?", (row["ImageSha256"],)).fetchone()
            if owner is not None:
                return GatewayResult.permanent("UserAlreadyExists: this face image is registered to another user")
            conn.execute(
                "INSERT INTO users (user_key, user_id, external_image_id, image_sha256, image_size, image_format,"
                " image_width, image_height, properties_json, registered_at, registrations, attempts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row["UserKey"], row["UserId"], row["ExternalImageId"], row["ImageSha256"], row["ImageSize"],
                    row["ImageFormat"], row["ImageWidth"], row["ImageHeight"], row["Properties"],
                    row["RegisteredAt"], row["Registrations"], row["Attempts"],
                ),
            )
            return GatewayResult.succeeded()

    def users(self) -> list[dict[str, Any]]:
        """Registered users (no properties, no image): user_id, image_sha256, registered_at,
        registrations, attempts; oldest first."""
        rows = self._connect().execute(
                "SELECT user_id, image_sha256, registered_at, registrations, attempts FROM users"
                " ORDER BY registered_at, user_key"
        ).fetchall()
        keys = ("user_id", "image_sha256", "registered_at", "registrations", "attempts")
        return [dict(zip(keys, r)) for r in rows]

    def register_calls(self) -> int:
        """How many times `register` reached the registry (every process, every outcome)."""
        return int(self._connect().execute("SELECT value FROM stats WHERE name = 'register_calls'").fetchone()[0])
