"""A loopback fake of the RIV UserPortal gateway, for tests: a real HTTP server on 127.0.0.1.

    with FakeRivGateway() as riv:                    # answers SUCCEEDED by default
        riv.script(Answer.http(429), Answer.succeeded())   # the next two calls, in order
        riv.answer_for("bob", Answer.failed("No face detected"))  # every call for bob
        gateway = RivHttpGateway(url=riv.url)
        ...
        assert riv.calls_for("alice") == 1 and riv.registrations == {"alice": 1}

Choice of answer per request: the scripted queue first, then the per-user answer, then the
default (or, with `emulate_registry=True`, the registry's rules: an image already registered
to another user -> FAILED UserAlreadyExists). For RIV's whole register path (its mapping, its
workflow's errors, check-userid, its latency), use `riv_standin.RivStandIn`. Every request is
recorded (`requests`); `registrations` counts SUCCEEDED answers per user honestly: a repeated call
that succeeds again counts again.

Auth checks (answer 403 without recording a registration): `api_key=` expects that key in
`api_key_header`; `sigv4=SigV4Expectation(...)` recomputes the SigV4 signature with botocore
from the received request and compares it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

__all__ = ["Answer", "FakeRivGateway", "ReceivedRequest", "SigV4Expectation"]


@dataclass(frozen=True)
class Answer:
    """One scripted behaviour. Build with the class methods."""

    kind: str  # "json" | "raw" | "drop"
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    delay_seconds: float = 0.0

    @classmethod
    def succeeded(cls) -> "Answer":
        return cls.json_answer(200, {"status": "SUCCEEDED"})

    @classmethod
    def failed(cls, error: str, message: str = "") -> "Answer":
        """HTTP 200 with status FAILED, as RIV really answers: Step Functions' `error` (the Lambda
        exception's class name) and `cause` (Lambda's JSON of the exception)."""
        cause = json.dumps({"errorMessage": message or error, "errorType": error, "stackTrace": []})
        return cls.json_answer(200, {"status": "FAILED", "error": error, "cause": cause})

    @classmethod
    def user_already_exists(cls) -> "Answer":
        return cls.failed("UserAlreadyExists")

    @classmethod
    def http(cls, status: int, payload: Optional[dict[str, Any]] = None) -> "Answer":
        """An HTTP error status (429, 500, 503, 403, ...) with a small JSON body."""
        return cls.json_answer(status, payload if payload is not None else {"message": f"fake error {status}"})

    @classmethod
    def json_answer(cls, status: int, payload: Any) -> "Answer":
        return cls("json", status, json.dumps(payload).encode("utf-8"))

    @classmethod
    def raw(cls, status: int, body: bytes, content_type: str = "text/html") -> "Answer":
        """Any body, e.g. a non-JSON 200."""
        return cls("raw", status, body, content_type)

    @classmethod
    def drop(cls) -> "Answer":
        """Read the request, then close the connection without answering."""
        return cls("drop")

    def slow(self, seconds: float) -> "Answer":
        """This answer, after `seconds` (cut short when the server stops)."""
        return Answer(self.kind, self.status, self.body, self.content_type, seconds)


@dataclass(frozen=True)
class SigV4Expectation:
    access_key: str
    secret_key: str
    region: str
    service: str = "execute-api"
    token: Optional[str] = None


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    user_id: Optional[str]  # None when the body was not the expected JSON
    body_size: int
    headers: dict[str, str]  # lower-cased names
    image_sha256: Optional[str]
    authorized: bool
    status: Optional[int]  # the HTTP status answered; None when the connection was dropped
    received_at: float = 0.0  # time.time() when the request line arrived: the gateway's own clock


_AUTH_HEADER_RE = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[^,]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


def sigv4_is_valid(expect: SigV4Expectation, method: str, url: str, headers: dict[str, str], body: bytes) -> bool:
    """Recompute the request's SigV4 signature with botocore and compare it with the one received."""
    match = _AUTH_HEADER_RE.match(headers.get("authorization", ""))
    amz_date = headers.get("x-amz-date", "")
    if not match or not amz_date.startswith(match["date"]):
        return False
    if (match["key"], match["region"], match["service"]) != (expect.access_key, expect.region, expect.service):
        return False
    if expect.token is not None and headers.get("x-amz-security-token") != expect.token:
        return False
    signed = match["signed"].split(";")
    if "host" not in signed or any(name not in headers for name in signed):
        return False
    request = AWSRequest(method=method, url=url, data=body, headers={n: headers[n] for n in signed})
    request.context["timestamp"] = amz_date  # the client's moment, not ours
    signer = SigV4Auth(Credentials(expect.access_key, expect.secret_key, expect.token), expect.service, expect.region)
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    return hmac.compare_digest(signer.signature(string_to_sign, request), match["signature"])


class FakeRivGateway:
    """The fake gateway. Use as a context manager, or call start() / stop()."""

    def __init__(
        self,
        *,
        default: Optional[Answer] = None,
        emulate_registry: bool = False,
        api_key: Optional[str] = None,
        api_key_header: str = "x-api-key",
        sigv4: Optional[SigV4Expectation] = None,
    ) -> None:
        self.default = default or Answer.succeeded()
        self.emulate_registry = emulate_registry
        self.api_key = api_key
        self.api_key_header = api_key_header.lower()
        self.sigv4 = sigv4
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._queue: deque[Answer] = deque()
        self._per_user: dict[str, Answer] = {}
        self._requests: list[ReceivedRequest] = []
        self._bodies: list[bytes] = []
        self._registrations: Counter[str] = Counter()
        self._faces: dict[str, str] = {}  # emulate_registry: image sha256 -> user key
        self._users: dict[str, str] = {}  # emulate_registry: user key -> image sha256
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ---- lifecycle ----

    def start(self) -> "FakeRivGateway":
        self._stopping.clear()
        handler = type("_Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-riv", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes slow answers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeRivGateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeRivGateway is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---- programming ----

    def script(self, *answers: Answer) -> None:
        """Answers for the next requests, in order, whoever they are for."""
        with self._lock:
            self._queue.extend(answers)

    def answer_for(self, user_id: str, answer: Answer) -> None:
        """The answer for every request for `user_id` (after the scripted queue is used up)."""
        with self._lock:
            self._per_user[user_id] = answer

    # ---- what happened ----

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def registrations(self) -> dict[str, int]:
        """SUCCEEDED answers per user id (every one of them, repeats included)."""
        with self._lock:
            return dict(self._registrations)

    @property
    def bodies(self) -> list[bytes]:
        """The raw body of every request, in order (what a real gateway would have received)."""
        with self._lock:
            return list(self._bodies)

    def calls_for(self, user_id: str) -> int:
        return sum(1 for r in self.requests if r.user_id == user_id)

    # ---- used by the handler ----

    def _choose(self, user_id: Optional[str], image_sha256: Optional[str]) -> Answer:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if user_id in self._per_user:
                return self._per_user[user_id]
            if self.emulate_registry and user_id is not None and image_sha256 is not None:
                # RIV: a second image of a user is a second face; the same face for another id fails.
                user_key = f"User::{user_id.lower()}"
                owner = self._faces.get(image_sha256)
                if owner is not None and owner != user_key:
                    return Answer.user_already_exists()
                self._users[user_key] = image_sha256
                self._faces[image_sha256] = user_key
            return self.default

    def _check_userid(self, user_id: Optional[str]) -> Answer:
        """The scripted answer, else RIV's: User::<id as sent> among the registered users."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            known = self.emulate_registry and f"User::{user_id}" in set(self._faces.values())
        return Answer.json_answer(200, {"Reason": "User Exist" if known else "User not Exist"})

    def _record(self, request: ReceivedRequest, answer: Optional[Answer]) -> None:
        with self._lock:
            self._requests.append(request)
            if answer is not None and request.user_id is not None and _is_success(answer):
                self._registrations[request.user_id] += 1


def _is_success(answer: Answer) -> bool:
    if answer.kind != "json" or answer.status != 200:
        return False
    try:
        return json.loads(answer.body).get("status") == "SUCCEEDED"
    except (ValueError, AttributeError):
        return False


class _Handler(BaseHTTPRequestHandler):
    fake: FakeRivGateway  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool is exercised

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `requests` instead
        pass

    def do_POST(self) -> None:
        received_at = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        user_id, image_sha256 = _parse(body)
        authorized = self._authorized(headers, body)
        with self.fake._lock:
            self.fake._bodies.append(body)
        if self.path == "/check-userid" and authorized:
            answer: Optional[Answer] = self.fake._check_userid(user_id)
        elif self.path != "/register":
            answer = Answer.http(404, {"message": "Not Found"})
        elif not authorized:
            answer = Answer.http(403, {"message": "Forbidden"})
        elif user_id is None:
            answer = Answer.http(400, {"message": "Bad Request"})
        else:
            answer = self.fake._choose(user_id, image_sha256)
        status = None if answer.kind == "drop" else answer.status
        self.fake._record(  # on receipt: a client that times out still reached the gateway
            ReceivedRequest(
                "POST", self.path, user_id, len(body), headers, image_sha256, authorized, status, received_at
            ),
            answer if self.path == "/register" and authorized else None,
        )
        if answer.delay_seconds:
            self.fake._stopping.wait(answer.delay_seconds)
        if answer.kind == "drop":
            self.close_connection = True  # the server closes the socket: no status line at all
            return
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            self.close_connection = True

    def _authorized(self, headers: dict[str, str], body: bytes) -> bool:
        fake = self.fake
        if fake.api_key is not None and not hmac.compare_digest(
            headers.get(fake.api_key_header, "").encode(), fake.api_key.encode()
        ):
            return False
        if fake.sigv4 is not None:
            url = f"http://{headers.get('host', '')}{self.path}"
            return sigv4_is_valid(fake.sigv4, self.command, url, headers, body)
        return True


def _parse(body: bytes) -> tuple[Optional[str], Optional[str]]:
    """(UserId, SHA-256 of the decoded image) from a register body; (None, None) if malformed."""
    try:
        payload = json.loads(body)
        user_id = payload["UserId"]
        image = base64.b64decode(payload["Image"], validate=True) if "Image" in payload else None
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None, None
    if not isinstance(user_id, str):
        return None, None
    return user_id, hashlib.sha256(image).hexdigest() if image is not None else None


def forget_user(gateway: "FakeRivGateway", user_id: str) -> None:
    """The registry's team removes a user (emulate_registry): their face is free again."""
    with gateway._lock:
        sha = gateway._users.pop(f"User::{user_id.lower()}", None)
        if sha is not None:
            gateway._faces.pop(sha, None)
