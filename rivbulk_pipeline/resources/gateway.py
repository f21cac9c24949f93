"""Gateways: register one user with one face image (`core.ports.Gateway`).

- `LocalRegistryGateway`: the embedded registry, a real SQLite database with the RIV rules.
- `RivHttpGateway`: the RIV UserPortal gateway over HTTP (`POST <url>/register`).

Both make ONE attempt per call and never raise for a per-user failure: the caller does the
retries, the backoff and the rate limiting. Neither logs nor echoes images, properties or keys.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from contextlib import closing
from datetime import datetime, timezone
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Optional

import boto3
import dagster as dg
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from pydantic import Field, PrivateAttr
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from ..core.errors import ImageRejected
from ..core.images import ImageInfo, check_image, external_image_id, validate_user_id
from ..core.model import GatewayResult

DYNAMODB_ITEM_LIMIT = 400 * 1024  # the RIV user record lives in one DynamoDB item
STEP_FUNCTIONS_PAYLOAD_LIMIT = 262_144  # RIV runs register in a synchronous Express workflow
_AUTH_MODES = ("none", "api_key", "sigv4")
_SETUP_LOCK = threading.Lock()  # lazy client creation from many threads


class GatewayResource(dg.ConfigurableResource):
    """Base of the gateways, so the Dagster wiring can annotate with it and bind either."""

    def register(self, user_id: str, image: bytes, properties: Mapping[str, str]) -> GatewayResult:
        raise NotImplementedError


# ---- checks both gateways apply before doing anything ----


class _Rejected(Exception):
    """A permanent per-user failure found locally; `reason` goes into the GatewayResult."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _checked_properties(properties: Optional[Mapping[str, str]]) -> dict[str, str]:
    # The contract (and the RIV record) is Mapping[str, str]. Name the type, never a key or value.
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise _Rejected(f"InvalidProperties: properties must be a Mapping[str, str], not {type(properties).__name__}")
    for key, value in properties.items():
        if not isinstance(key, str):
            raise _Rejected(f"InvalidProperties: properties must be a Mapping[str, str]; a key is {type(key).__name__}")
        if not isinstance(value, str):
            raise _Rejected(
                f"InvalidProperties: properties must be a Mapping[str, str]; a value is {type(value).__name__}"
            )
    return dict(properties)


def _checked_input(
    user_id: str, image: bytes, properties: Optional[Mapping[str, str]]
) -> tuple[ImageInfo, dict[str, str]]:
    why = validate_user_id(user_id)
    if why:
        raise _Rejected(f"InvalidUserId: {why}")
    props = _checked_properties(properties)
    try:
        info = check_image(image, f"the image for user {user_id}")
    except ImageRejected as exc:
        raise _Rejected(f"{exc.reason_code}: {exc.detail}") from None
    return info, props


def dynamodb_item_size(item: Mapping[str, Any]) -> int:
    """DynamoDB's item size: UTF-8 attribute names plus values (numbers ~1 byte per 2 digits + 1)."""
    size = 0
    for name, value in item.items():
        size += len(name.encode("utf-8"))
        if isinstance(value, str):
            size += len(value.encode("utf-8"))
        elif isinstance(value, bool):
            size += 1
        elif isinstance(value, int):
            size += (len(str(abs(value))) + 1) // 2 + 1
        else:
            raise TypeError(f"dynamodb_item_size: unsupported attribute type {type(value).__name__} for {name}")
    return size


# ---- the embedded registry ----

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

    _schema_ready: bool = PrivateAttr(default=False)

    def _connect(self) -> sqlite3.Connection:
        # A connection per call: sqlite3 connections are per thread, and this is cheap next to
        # decoding the image. `timeout` is SQLite's busy_timeout; isolation_level=None lets us
        # take the write lock up front with BEGIN IMMEDIATE.
        parent = os.path.dirname(os.path.abspath(self.db_path))
        os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout_seconds, isolation_level=None)
        try:
            if not self._schema_ready:
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
                conn.executescript(_SCHEMA)  # idempotent; concurrent creators are serialised by SQLite
                self._schema_ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    def register(self, user_id: str, image: bytes, properties: Mapping[str, str]) -> GatewayResult:
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
        try:
            with closing(self._connect()) as conn:
                return self._apply(conn, user_key, problem, row)
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
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT user_id, image_sha256, registered_at, registrations, attempts FROM users"
                " ORDER BY registered_at, user_key"
            ).fetchall()
        keys = ("user_id", "image_sha256", "registered_at", "registrations", "attempts")
        return [dict(zip(keys, r)) for r in rows]

    def register_calls(self) -> int:
        """How many times `register` reached the registry (every process, every outcome)."""
        with closing(self._connect()) as conn:
            return int(conn.execute("SELECT value FROM stats WHERE name = 'register_calls'").fetchone()[0])


# ---- the RIV UserPortal gateway over HTTP ----


class _ApiKeyAuth(AuthBase):
    """Puts the API key in its header (an explicit auth also keeps requests from using ~/.netrc)."""

    def __init__(self, header: str, key: str) -> None:
        self._header = header
        self._key = key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers[self._header] = self._key
        return r

    def __repr__(self) -> str:  # never show the key
        return f"_ApiKeyAuth(header={self._header!r})"


class _SigV4RequestsAuth(AuthBase):
    """Signs the prepared request with SigV4 for API Gateway (execute-api), fresh credentials each call."""

    def __init__(self, credentials: Any, region: str) -> None:
        self._credentials = credentials  # botocore (Refreshable)Credentials from the standard chain
        self._region = region

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        # Sign only headers we control (host, content-type, x-amz-*), not the ones urllib3 may adjust.
        aws_request = AWSRequest(
            method=r.method, url=r.url, data=r.body, headers={"Content-Type": r.headers["Content-Type"]}
        )
        frozen = self._credentials.get_frozen_credentials()  # refreshes expiring credentials
        SigV4Auth(frozen, "execute-api", self._region).add_auth(aws_request)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            if name in aws_request.headers:
                r.headers[name] = aws_request.headers[name]
        return r


def _failure_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: Optional[BaseException] = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


_REASON_KEYS = ("reason", "Reason", "error", "Error", "errorType", "Code", "code",
                "message", "Message", "errorMessage", "cause", "Cause")


def _gateway_reason(answer: Mapping[str, Any], depth: int = 0) -> str:
    """The gateway's own reason for a FAILED answer, from the first key that holds one."""
    for key in _REASON_KEYS:
        value = answer.get(key)
        if isinstance(value, str) and value.strip():
            text = "".join(c if c.isprintable() else " " for c in value.strip())
            return text[:300]
        if isinstance(value, Mapping) and depth < 3:
            nested = _gateway_reason(value, depth + 1)
            if nested:
                return nested
    return ""


def _interpret(response: requests.Response) -> GatewayResult:
    code = response.status_code
    if code == 200:
        # RIV answers 200 even when registration failed: only the body's status decides.
        try:
            answer = response.json()
        except ValueError:
            return GatewayResult.transient("HTTP 200 with an unreadable body (not JSON)")
        status = str(answer.get("status", "")).upper() if isinstance(answer, dict) else ""
        if status == "SUCCEEDED":
            return GatewayResult.succeeded()
        if status == "FAILED":
            return GatewayResult.permanent(_gateway_reason(answer) or "FAILED (the gateway gave no reason)")
        return GatewayResult.transient("HTTP 200 with an unreadable body (no SUCCEEDED/FAILED status)")
    if code == 429 or code >= 500:
        return GatewayResult.transient(f"HTTP {code}")
    if code in (401, 403):
        # Our credentials or the gateway's policy, not this user: never burn the object as failed.
        # No body text: API Gateway's auth errors can quote the Authorization header.
        return GatewayResult.transient(f"HTTP {code}: the gateway refused our credentials (check RIVBULK_GATEWAY_AUTH)")
    if 400 <= code < 500:
        return GatewayResult.permanent(f"HTTP {code}")
    # 1xx/2xx/3xx other than 200: not the contract (e.g. a redirect from a wrong URL); a later run retries.
    return GatewayResult.transient(f"HTTP {code}: unexpected answer")


class RivHttpGateway(GatewayResource):
    """The RIV UserPortal gateway: `POST <url>/register` with `{"UserId", "Image", "Properties"}`.

    Success only on HTTP 200 with `"status": "SUCCEEDED"`. One attempt per call, a timeout on
    every call, one pooled `requests.Session` shared by the caller's threads.
    """

    url: str = Field(description="The UserPortal base URL; register is POSTed to <url>/register")
    auth: str = Field(default="none", description="none, api_key or sigv4")
    api_key: Optional[str] = Field(
        default=None, repr=False, description="API key for auth=api_key; pass dg.EnvVar, never a literal"
    )
    api_key_header: str = Field(default="x-api-key", description="Header carrying the API key")
    region_name: Optional[str] = Field(default=None, description="Region for sigv4 (default: the AWS chain's)")
    timeout_seconds: float = Field(default=30.0, description="Connect and read timeout of each call")
    max_payload_bytes: int = Field(
        default=STEP_FUNCTIONS_PAYLOAD_LIMIT, description="Largest JSON body sent (Step Functions' 256 KB state)"
    )
    pool_size: int = Field(default=32, description="Pooled connections kept: about the number of caller threads")

    _session: Optional[requests.Session] = PrivateAttr(default=None)
    _auth: Optional[AuthBase] = PrivateAttr(default=None)

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/register"

    def _build_auth(self) -> Optional[AuthBase]:
        # Configuration errors are not per-user failures: they raise, so the run stops loudly.
        if not self.url.lower().startswith(("http://", "https://")):
            raise ValueError("RivHttpGateway.url must start with http:// or https://")
        if not self.timeout_seconds > 0:
            raise ValueError("RivHttpGateway.timeout_seconds must be > 0")
        mode = self.auth.lower()
        if mode not in _AUTH_MODES:
            raise ValueError(f"RivHttpGateway.auth must be one of {', '.join(_AUTH_MODES)}, not {self.auth!r}")
        if mode == "api_key":
            if not self.api_key:
                raise ValueError("RivHttpGateway: auth='api_key' needs api_key (set it from an environment variable)")
            return _ApiKeyAuth(self.api_key_header, self.api_key)
        if mode == "sigv4":
            session = boto3.Session(region_name=self.region_name)
            credentials = session.get_credentials()
            if credentials is None:
                raise ValueError("RivHttpGateway: auth='sigv4' found no AWS credentials in the standard chain")
            region = self.region_name or session.region_name
            if not region:
                raise ValueError("RivHttpGateway: auth='sigv4' needs region_name (or AWS_REGION)")
            return _SigV4RequestsAuth(credentials, region)
        return None

    def _client(self) -> tuple[requests.Session, Optional[AuthBase]]:
        if self._session is None:
            with _SETUP_LOCK:
                if self._session is None:
                    self._auth = self._build_auth()
                    session = requests.Session()
                    # urllib3's pool is thread-safe; size it for the caller's threads. No retries here.
                    adapter = HTTPAdapter(pool_maxsize=self.pool_size, max_retries=0)
                    session.mount("http://", adapter)
                    session.mount("https://", adapter)
                    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # stateless calls
                    self._session = session
        return self._session, self._auth

    def register(self, user_id: str, image: bytes, properties: Mapping[str, str]) -> GatewayResult:
        try:
            _, props = _checked_input(user_id, image, properties)
        except _Rejected as exc:
            return GatewayResult.permanent(exc.reason)
        body = json.dumps(
            {"UserId": user_id, "Image": base64.b64encode(image).decode("ascii"), "Properties": props},
            ensure_ascii=False,
        ).encode("utf-8")
        if len(body) > self.max_payload_bytes:
            return GatewayResult.permanent(f"PayloadTooLarge: {len(body)} bytes > {self.max_payload_bytes}")
        session, auth = self._client()
        timeout = self.timeout_seconds
        try:
            response = session.post(
                self.endpoint,
                data=body,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                auth=auth,
                timeout=(timeout, timeout),
                allow_redirects=False,
            )
        except requests.Timeout:
            return GatewayResult.transient(f"timeout after {timeout:g}s")
        except requests.RequestException as exc:
            chain = _failure_chain(exc)
            if any(isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ for e in chain):
                return GatewayResult.transient(f"timeout after {timeout:g}s")  # timed out reading the body
            return GatewayResult.transient(f"connection error ({type(chain[-1]).__name__})")
        with response:
            return _interpret(response)

    def close(self) -> None:
        """Close pooled connections (also done at the end of a Dagster step)."""
        with _SETUP_LOCK:
            if self._session is not None:
                self._session.close()
                self._session = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()
