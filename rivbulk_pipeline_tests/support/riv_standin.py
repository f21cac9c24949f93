"""A stand-in of RIV's whole register path, as a real HTTP server on 127.0.0.1, for tests and benchmarks.

Written from the facts of the real system (../shared/FACTS.md, "The RIV gateway as its code really
behaves", and RIV's own files, read for facts only), not from what our client expects:

    API Gateway (REST, stage "prod")          POST /prod/register, POST /prod/check-userid (head only)
      -> request mapping                      {"inputRequest": escapeJavaScript($input.json('$'))}
      -> Step Functions StartSyncExecution    Express workflow, 30 s timeout
           detect-faces -> search-faces -> Choice -> index-faces -> Pass
      <- HTTP 200 with StartSyncExecution's own fields (every workflow failure is a 200)

    with RivStandIn(version="head", integration_timeout=1.0, latency=0.2) as riv:
        requests.post(riv.url + "/register", json={"UserId": "bob", "Image": b64, "Properties": {},
                                                    "Bucket": "b", "Name": "k.png"})
        riv.faces_for("bob")              # faces stored under User::bob
        riv.rekognition_calls["DetectFaces"]

Faces (the test convention). Images are real PNG/JPEG bytes. Every image holds one face, whose
identity ("person") is the SHA-256 of the image bytes, with a neutral pose and no sunglasses. A test
changes that per image, either on the stand-in (`riv.face_behaviour(image, "no_face")`,
`riv.same_person(image_a, image_b)`) or inside the image itself: a PNG text chunk or a JPEG comment
`riv-face` holding a behaviour name, `person=<name>`, or both separated by `;` (see `make_png`).
Behaviours: one_face, no_face, low_confidence (a face at confidence <= 90: RIV sees none), two_faces,
pose, sunglasses, unindexable (IndexFaces' quality filter drops the face: RIV's NotImplementedError).

Two RIV versions (`version=`):
  "pre-98f4a0d": every step reads `Image` (KeyError without it); index-faces reads `UserId`, `Image`
      and, if present, `Properties`; unknown fields are ignored; no /check-userid route.
  "head" (3a1733f): detect- and search-faces read `Image`, else S3 `Bucket`/`Name` as sent;
      index-faces reads `UserId` (lower-cased and stripped), `Bucket`, `Name` (both lower-cased) and
      `Properties` unconditionally (KeyError after two paid calls), indexes the bytes of `Image`, else
      the S3 object at the lower-cased Bucket/Name; /check-userid exists.

API Gateway: unknown path or method -> 403 Missing Authentication Token; a Content-Type other than
application/json -> 415; a body that is not JSON -> 400 "Could not parse request body into json";
an apostrophe anywhere (also written as \u0027) or an execution input over 256 KiB -> 500 Internal
server error (StartSyncExecution refuses the request; no integration response selects a 4xx); no
answer within `integration_timeout` -> 504 while the workflow runs on and commits. TIMED_OUT reaches
the client only when `workflow_timeout` <= `integration_timeout` (in RIV, 30 s > 29 s: never).

Step Functions' 256 KiB holds for the state after each step (request + each LambdaInvoke result,
sized like RIV's): past it, States.DataLimitExceeded names the step; after Index-FaceInfo, the face
is already stored although the answer is FAILED.

Faults: `inject(n, error, step=None)` / `throttle(n)` fail the next n workflows where that error
really arises; `drop_next(n, when)` closes connections without an answer; `latency` (+- jitter) is
spread over the three steps of each workflow. `partition_count` > 1 models RIV's collection
partitions chosen by Python's per-process randomised hash() (search and index may look in different
collections); `stranger_similarity` >= 0.80 models RIV's FaceMatchThreshold of 0.80 on a 0-100 scale
(any stored face of another person then matches). Both default to the simple, deterministic case.

Observations: `requests` (path, times, status, body without the image), `workflow_starts`,
`rekognition_calls` (paid) and `rekognition_attempts`, `faces_for(id)` (table rows under
User::<id lower-cased>), `collection_faces_for(id)`, `max_concurrency`, `wait_for_workflows()`.

Deviations kept on purpose: the other RIV routes (/update, /auth, /register-idcard) exist (so they do
not answer 403) but answer 501 here; times are scaled by the constructor's arguments.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

__all__ = [
    "BEHAVIOURS",
    "RecordedRequest",
    "RivStandIn",
    "STATE_LIMIT_BYTES",
    "execution_input_bytes",
    "make_jpeg",
    "make_png",
    "pad_png",
]

VERSIONS = ("pre-98f4a0d", "head")
BEHAVIOURS = ("one_face", "no_face", "low_confidence", "two_faces", "pose", "sunglasses", "unindexable")

# Step Functions' payload quota: the execution input and every state's data, as UTF-8 JSON.
STATE_LIMIT_BYTES = 256 * 1024
REKOGNITION_BYTES_LIMIT = 5 * 1024 * 1024  # raw image bytes in a request
REKOGNITION_S3_LIMIT = 15 * 1024 * 1024  # an image Rekognition reads from S3
REKOGNITION_MIN_SIDE = 80
EXTERNAL_IMAGE_ID = re.compile(r"[a-zA-Z0-9_.\-:]+")
EXTERNAL_IMAGE_ID_MAX = 255
NO_FACE_MATCH_ID = "Special:RIV_NO_FACE_MATCH"
FACE_MATCH_THRESHOLD = 0.80  # RIV passes 0.80 on Rekognition's 0-100 scale (search-faces/handler.py)

ACCOUNT = "123456789012"
REGION = "us-east-1"
STATE_MACHINE = "Riv-Prod-UserPortal-Register_User"
STATE_MACHINE_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{STATE_MACHINE}"

MISSING_TOKEN = {"message": "Missing Authentication Token"}
FORBIDDEN = {"message": "Forbidden"}
INTERNAL_ERROR = {"message": "Internal server error"}
TIMED_OUT_504 = {"message": "Endpoint request timed out"}
UNSUPPORTED_MEDIA = {"message": "Unsupported Media Type"}

# Which step an injected error hits by default, and what it has cost by then.
REKOGNITION_ERRORS = {
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "InternalServerError",
    "AccessDeniedException",
    "ResourceNotFoundException",
    "InvalidParameterException",
    "InvalidImageFormatException",
    "ImageTooLargeException",
    "InvalidS3ObjectException",
}
STORAGE_ERRORS = {"TransientError", "NonRecoverableError"}  # index-faces/storage.py, after IndexFaces
LAMBDA_SERVICE_ERRORS = {"Lambda.TooManyRequestsException", "Lambda.ServiceException", "Lambda.AWSLambdaException"}
DEFAULT_FAULT_STEP = {"ResourceNotFoundException": "search"}  # a missing collection is first touched by search
STEPS = ("detect", "search", "index")
STATE_NAMES = {"detect": "Check-ImageQuality", "search": "Search-ExistingFaces", "index": "Index-FaceInfo"}
FUNCTIONS = {"detect": "DetectFaces", "search": "SearchFaces", "index": "IndexFaces"}
OPERATIONS = {"detect": "DetectFaces", "search": "SearchFacesByImage", "index": "IndexFaces"}
BOTO_MESSAGES = {
    "ThrottlingException": "Rate exceeded",
    "ProvisionedThroughputExceededException": "Provisioned Rate exceeded",
    "LimitExceededException": "Limit exceeded",
    "InternalServerError": "Internal server error",
    "AccessDeniedException": "User is not authorized to perform this action",
    "ResourceNotFoundException": "The collection id: Riv-Prod-0 does not exist",
    "InvalidParameterException": "Request has invalid parameters",
    "InvalidImageFormatException": "Request has invalid image format",
    "ImageTooLargeException": "Image size is too large.",
    "InvalidS3ObjectException": (
        "Unable to get object metadata from S3. Check object key, region and/or access permissions."
    ),
}


def execution_input_bytes(body: Any) -> int:
    """Size of the execution input RIV's mapping builds from a request body (the 256 KiB check)."""
    return len(_execution_input(body).encode("utf-8"))


def make_png(label: str, size: int = 96, face: Optional[str] = None, noise: bool = False) -> bytes:
    """A real PNG whose pixels differ per `label`; `face` goes into the `riv-face` text chunk."""
    rng = random.Random(label)
    if noise:  # incompressible: the PNG is about size*size*3 bytes
        pixels = rng.randbytes(size * size * 3)
        img = PILImage.frombytes("RGB", (size, size), pixels)
    else:
        img = PILImage.new("RGB", (size, size), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        img.putpixel((size // 2, size // 2), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    info = PngInfo()
    if face is not None:
        info.add_text("riv-face", face)
    out = io.BytesIO()
    img.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def make_jpeg(label: str, size: int = 96, face: Optional[str] = None) -> bytes:
    """A real JPEG whose pixels differ per `label`; `face` goes into its comment."""
    rng = random.Random(label)
    img = PILImage.new("RGB", (size, size), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    kwargs = {"comment": f"riv-face:{face}".encode()} if face is not None else {}
    img.save(out, format="JPEG", **kwargs)
    return out.getvalue()


def pad_png(png: bytes, total_size: int) -> bytes:
    """The same PNG grown to exactly `total_size` bytes by a private ancillary chunk (decoders skip it)."""
    import struct
    import zlib

    filler = total_size - len(png) - 12
    if filler < 0:
        raise ValueError(f"PNG is already {len(png)} bytes, more than {total_size}")
    data = b"\0" * filler
    chunk = struct.pack(">I", filler) + b"rvPd" + data + struct.pack(">I", zlib.crc32(b"rvPd" + data) & 0xFFFFFFFF)
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + chunk + png[iend:]


# --------------------------------------------------------------------------------------------------
# Recording


@dataclass
class RecordedRequest:
    """One HTTP request as the stand-in saw it. `body` keeps no image: `Image` is replaced by a summary."""

    method: str
    path: str
    received_at: float
    headers: dict[str, str]
    body: Any = None
    answered_at: Optional[float] = None
    status: Optional[int] = None  # None: the connection was dropped without an answer
    execution_status: Optional[str] = None  # SUCCEEDED / FAILED / TIMED_OUT, for /register
    error: Optional[str] = None

    @property
    def user_id(self) -> Optional[str]:
        return self.body.get("UserId") if isinstance(self.body, dict) else None


@dataclass
class _Fault:
    error: str
    step: Optional[str]
    remaining: int


@dataclass
class _Face:
    face_id: str
    image_id: str
    external_image_id: str
    person: str
    collection: int


@dataclass
class _ImageFacts:
    format: Optional[str]  # "PNG" / "JPEG" / None when Rekognition would refuse the bytes
    width: int
    height: int
    behaviour: str
    person: str


class _StepError(Exception):
    """A failed execution: a Lambda's exception, a Fail state, or a Step Functions error."""

    def __init__(self, error: str, cause: str, *, status: str = "FAILED") -> None:
        super().__init__(error)
        self.error = error
        self.cause = cause
        self.status = status


@dataclass
class _Execution:
    name: str
    body: Any
    start: float
    deadline: float  # monotonic
    done: threading.Event = field(default_factory=threading.Event)
    timed_out: bool = False
    result: Optional[dict[str, Any]] = None


# --------------------------------------------------------------------------------------------------
# The stand-in


class RivStandIn:
    """RIV's register path on 127.0.0.1. Thread-safe; a context manager; `.url` ends with the stage (no slash)."""

    def __init__(
        self,
        *,
        version: str = "head",
        check_userid: Optional[bool] = None,
        integration_timeout: float = 29.0,
        workflow_timeout: float = 30.0,
        latency: float = 0.0,
        latency_jitter: float = 0.0,
        api_key: Optional[str] = None,
        api_key_header: str = "x-api-key",
        s3_client: Any = None,
        fetch_object: Optional[Callable[[str, str], Optional[bytes]]] = None,
        partition_count: int = 1,
        stranger_similarity: float = 0.0,
        stage: str = "prod",
        seed: Optional[int] = None,
        request_queue_size: int = 512,
    ) -> None:
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, not {version!r}")
        self.version = version
        self.has_check_userid = (version == "head") if check_userid is None else check_userid
        self.integration_timeout = integration_timeout
        self.workflow_timeout = workflow_timeout
        self.latency = latency
        self.latency_jitter = latency_jitter
        self.api_key = api_key
        self.api_key_header = api_key_header.lower()
        self._s3 = s3_client
        self._fetch = fetch_object
        self.partition_count = partition_count
        self.stranger_similarity = stranger_similarity
        self.stage = stage.strip("/")
        self._rng = random.Random(seed)
        self._queue_size = request_queue_size

        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

        self._behaviours: dict[str, str] = {}
        self._persons: dict[str, str] = {}
        self._image_cache: dict[str, _ImageFacts] = {}
        self._faults: deque[_Fault] = deque()
        self._drops: deque[str] = deque()
        self._collection: list[_Face] = []
        self._table: dict[str, dict[str, dict[str, Any]]] = {}

        self._requests: list[RecordedRequest] = []
        self._workflow_starts: list[float] = []
        self._calls: Counter[str] = Counter()
        self._attempts: Counter[str] = Counter()
        self._in_flight = 0
        self._max_concurrency = 0
        self._workflows_running = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> "RivStandIn":
        standin = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = standin._queue_size

        class Handler(_Handler):
            riv = standin

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="riv-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "RivStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The invoke URL, like RIV's `/riv/<stack>/userportal/url` without its trailing slash."""
        assert self._server is not None, "start() the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/{self.stage}"

    # -- test controls -----------------------------------------------------------------------------

    def face_behaviour(self, image: bytes, behaviour: str) -> None:
        """What the face in these exact bytes does (one of BEHAVIOURS)."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}, not {behaviour!r}")
        with self._lock:
            self._behaviours[_sha256(image)] = behaviour

    def same_person(self, image: bytes, *others: bytes) -> None:
        """The faces in `others` are the person in `image` (e.g. a second photo of the same user)."""
        with self._lock:
            person = self._persons.get(_sha256(image), _sha256(image))
            for other in others:
                self._persons[_sha256(other)] = person

    def inject(self, n: int, error: str, step: Optional[str] = None) -> None:
        """The next `n` workflows fail with `error` at `step` (default: where that error really arises).

        Rekognition errors (ThrottlingException, ProvisionedThroughputExceededException, ...) come from
        the step's Rekognition call (default detect; ResourceNotFoundException at search), nothing paid
        for that call. TransientError / NonRecoverableError come from index-faces' DynamoDB PutItem,
        after IndexFaces stored the face in the collection (the collection keeps it; the table does not).
        Lambda.* service errors fail the step before its function runs. Any other name fails the
        step's function with that exception name."""
        if step is not None and step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}")
        with self._lock:
            self._faults.append(_Fault(error, step, n))

    def throttle(self, n: int, error: str = "ThrottlingException", step: Optional[str] = None) -> None:
        """Shorthand for inject(): the next `n` workflows are throttled."""
        self.inject(n, error, step)

    def drop_next(self, n: int = 1, when: str = "after") -> None:
        """Close the next `n` /register connections without an answer, after reading the request.

        when="before": at once, while the workflow starts anyway (API Gateway has the request);
        when="after": once the workflow has finished (and committed whatever it committed)."""
        if when not in ("before", "after"):
            raise ValueError('when must be "before" or "after"')
        with self._lock:
            self._drops.extend([when] * n)

    def set_latency(self, seconds: float, jitter: float = 0.0) -> None:
        with self._lock:
            self.latency, self.latency_jitter = seconds, jitter

    def seed_user(self, user_id: str, image: bytes, properties: Optional[dict[str, Any]] = None) -> None:
        """A face registered before the test, as a successful head registration would leave it."""
        facts = self._image_facts(image)
        lower = user_id.lower().strip()
        with self._lock:
            face = self._add_face_locked(lower, facts.person, self._collection_of(lower))
            self._put_item_locked(lower, face.face_id, properties or {})

    def wait_for_workflows(self, timeout: float = 10.0) -> bool:
        """Wait until no workflow runs (e.g. the one behind a 504). True if idle in time."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._workflows_running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # -- observations ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def workflow_starts(self) -> list[float]:
        """time.time() of every StartSyncExecution, in order (for rate checks)."""
        with self._lock:
            return sorted(self._workflow_starts)

    @property
    def rekognition_calls(self) -> Counter[str]:
        """Paid Rekognition calls per operation: DetectFaces, SearchFacesByImage, IndexFaces."""
        with self._lock:
            return Counter(self._calls)

    @property
    def rekognition_attempts(self) -> Counter[str]:
        """Rekognition calls made, paid or refused (throttled, invalid image, ...)."""
        with self._lock:
            return Counter(self._attempts)

    @property
    def max_concurrency(self) -> int:
        """Most HTTP requests in flight at once."""
        with self._lock:
            return self._max_concurrency

    def forget_user(self, user_id: str) -> None:
        """The registry's team removes a user: their rows and their faces in the collections go."""
        with self._lock:
            self._table.pop(f"User::{user_id.lower()}", None)
            self._collection = [f for f in self._collection if f.external_image_id != user_id.lower()]

    @property
    def registrations(self) -> dict[str, int]:
        """Face rows per registered user (the id as stored, lower-cased): what the registry holds."""
        with self._lock:
            return {key.removeprefix("User::"): len(rows) for key, rows in self._table.items() if rows}

    def faces_for(self, user_id: str) -> int:
        """Face rows in the table under User::<user_id lower-cased>."""
        with self._lock:
            return len(self._table.get(f"User::{user_id.lower()}", {}))

    def collection_faces_for(self, user_id: str) -> int:
        """Faces in the Rekognition collections whose ExternalImageId is `user_id` lower-cased."""
        with self._lock:
            return sum(1 for f in self._collection if f.external_image_id == user_id.lower())

    def properties_for(self, user_id: str) -> list[dict[str, str]]:
        with self._lock:
            return [dict(item["property_bag"]) for item in self._table.get(f"User::{user_id.lower()}", {}).values()]

    # -- API Gateway -------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> Optional[str]:
        prefix = f"/{self.stage}/"
        if not path.startswith(prefix):
            return None
        resource = path[len(prefix) :]
        routes = {"register", "update", "auth", "register-idcard"}
        if self.has_check_userid:
            routes.add("check-userid")
        if resource not in routes:
            return None
        if method == "OPTIONS" and self.version == "head":
            return "cors"
        return resource if method == "POST" else None

    def _register(self, handler: "_Handler", record: RecordedRequest, raw: bytes) -> None:
        media_type = record.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            # The only request template is for application/json, and passthrough is NEVER.
            handler.answer(record, 415, UNSUPPORTED_MEDIA)
            return
        parsed = _parse_mapping_body(raw)
        if isinstance(parsed, _HttpAnswer):
            handler.answer(record, parsed.status, parsed.payload)
            return
        body = parsed
        record.body = _redact(body)
        if "'" in _reserialised(body):
            # escapeJavaScript turns ' into \' inside the template's JSON string: StartSyncExecution
            # refuses the malformed request (400), which neither integration response (200, 500) selects.
            handler.answer(record, 500, INTERNAL_ERROR)
            return
        if execution_input_bytes(body) > STATE_LIMIT_BYTES:
            # StartSyncExecution refuses an input over the quota (400): the same unmatched 4xx -> 500.
            handler.answer(record, 500, INTERNAL_ERROR)
            return

        with self._lock:
            drop = self._drops.popleft() if self._drops else None
        execution = self._start_execution(body)
        if drop == "before":
            handler.drop(record)
            return
        finished = execution.done.wait(min(self.integration_timeout, self.workflow_timeout))
        if not finished and self.workflow_timeout <= self.integration_timeout:
            # Step Functions ends the execution at its timeout (the step in progress still runs on).
            with self._lock:
                if execution.result is None:
                    execution.timed_out = True
                    execution.result = self._timed_out_answer(execution)
            finished = True
        if drop == "after":
            execution.done.wait()
            handler.drop(record)
            return
        if not finished:
            record.execution_status = None
            handler.answer(record, 504, TIMED_OUT_504)
            return
        with self._lock:
            answer = dict(execution.result or {})
        record.execution_status = answer.get("status")
        record.error = answer.get("error")
        handler.answer(record, 200, answer)

    def _check_userid(self, handler: "_Handler", record: RecordedRequest, raw: bytes) -> None:
        # A non-proxy Lambda integration: the JSON body is the event. A Lambda error matches neither
        # integration response (200, 500): API Gateway answers 500.
        try:
            event = json.loads(raw.decode("utf-8") or "{}")
        except (UnicodeDecodeError, ValueError):
            handler.answer(record, 500, INTERNAL_ERROR)
            return
        record.body = _redact(event)
        try:
            user_id = event["UserId"]
            partition = "User::" + user_id  # the id as sent: TypeError for a non-string
        except (KeyError, TypeError):
            handler.answer(record, 500, INTERNAL_ERROR)
            return
        with self._lock:
            stored = [partition.replace("User::", "", 1).lower()] if self._table.get(partition) else []
        handler.answer(record, 200, {"Reason": "User Exist" if user_id in stored else "User not Exist"})

    # -- the Express workflow ----------------------------------------------------------------------

    def _start_execution(self, body: Any) -> _Execution:
        name = str(uuid.uuid4())
        now = time.time()
        execution = _Execution(name=name, body=body, start=now, deadline=time.monotonic() + self.workflow_timeout)
        with self._lock:
            self._workflow_starts.append(now)
            self._workflows_running += 1
            fault = None
            if self._faults:
                fault = self._faults[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.popleft()
            latency = max(0.0, self.latency + self._rng.uniform(-self.latency_jitter, self.latency_jitter))
        threading.Thread(
            target=self._run_execution, args=(execution, fault, latency), name=f"riv-exec-{name[:8]}", daemon=True
        ).start()
        return execution

    def _run_execution(self, execution: _Execution, fault: Optional[_Fault], latency: float) -> None:
        try:
            try:
                output = self._workflow(execution, fault, latency / len(STEPS))
                result = self._answer(execution, "SUCCEEDED", output=output)
            except _StepError as failure:
                result = self._answer(execution, failure.status, error=failure.error, cause=failure.cause)
            with self._lock:
                if execution.result is None:
                    execution.result = result
        finally:
            execution.done.set()
            with self._idle:
                self._workflows_running -= 1
                self._idle.notify_all()

    def _workflow(self, execution: _Execution, fault: Optional[_Fault], step_latency: float) -> dict[str, Any]:
        request = execution.body if isinstance(execution.body, dict) else {}
        state: dict[str, Any] = {"inputRequest": execution.body}
        fault_step = None
        if fault is not None:
            fault_step = (
                fault.step
                or DEFAULT_FAULT_STEP.get(fault.error)
                or ("index" if fault.error in STORAGE_ERRORS else "detect")
            )
        for step in STEPS:
            if time.monotonic() >= execution.deadline or execution.timed_out:
                raise _StepError("States.Timeout", "The execution timed out.", status="TIMED_OUT")
            if self._stopping.wait(step_latency):
                raise _StepError("States.Runtime", "The stand-in stopped.")
            injected = fault.error if fault is not None and fault_step == step else None
            if step == "detect":
                payload = self._detect(request, injected)
            elif step == "search":
                payload = self._search(request, injected)
            else:
                payload = self._index(request, injected)
            if step == "search":
                state["search"] = _lambda_result(payload)
                top = payload["TopMatch"]["Face"]
                if not (top["ExternalImageId"] == NO_FACE_MATCH_ID or top.get("IsCallerUser") is True):
                    raise _StepError("UserAlreadyExists", "Cannot register double faces in same collections.")
            else:
                state["detection" if step == "detect" else "index"] = _lambda_result(payload)
            if _json_size(state) > STATE_LIMIT_BYTES:
                raise _StepError(
                    "States.DataLimitExceeded",
                    f"The state/task '{STATE_NAMES[step]}' returned a result with a size exceeding the "
                    "maximum number of bytes service limit.",
                )
        record = state["index"]["Payload"]["FaceRecord"]
        return {"UserId": request.get("UserId"), "ImageId": record["Face"]["ImageId"], "Status": "Registered"}

    def _answer(
        self, execution: _Execution, status: str, *, output: Any = None, error: str = "", cause: str = ""
    ) -> dict[str, Any]:
        stop = time.time()
        answer: dict[str, Any] = {
            "executionArn": (
                f"arn:aws:states:{REGION}:{ACCOUNT}:express:{STATE_MACHINE}:{execution.name}:{execution.name}"
            ),
            "stateMachineArn": STATE_MACHINE_ARN,
            "name": execution.name,
            "startDate": round(execution.start, 3),
            "stopDate": round(stop, 3),
            "status": status,
            "input": _execution_input(execution.body),
            "inputDetails": {"included": True},
            "billingDetails": {
                "billedMemoryUsedInMB": 64,
                "billedDurationInMilliseconds": max(100, int(math.ceil((stop - execution.start) * 10)) * 100),
            },
            "traceHeader": f"Root=1-{int(execution.start):08x}-{uuid.uuid4().hex[:24]};Sampled=1",
        }
        if status == "SUCCEEDED":
            answer["output"] = json.dumps(output, separators=(",", ":"))
            answer["outputDetails"] = {"included": True}
        else:
            answer["error"] = error
            answer["cause"] = cause
        return answer

    def _timed_out_answer(self, execution: _Execution) -> dict[str, Any]:
        return self._answer(execution, "TIMED_OUT", error="States.Timeout", cause="The execution timed out.")

    # detect-faces ---------------------------------------------------------------------------------

    def _detect(self, event: dict[str, Any], injected: Optional[str]) -> dict[str, Any]:
        self._lambda_service_fault("detect", injected)
        if self.version == "head" and event.get("Image") is None:
            facts = self._rekognition_s3(
                "detect", _key(event, "Bucket", "detect"), _key(event, "Name", "detect"), injected
            )
        else:
            facts = self._rekognition_image("detect", _image_bytes("detect", _key(event, "Image", "detect")), injected)
        self._paid("detect")
        self._function_fault("detect", injected)
        confident = {"no_face": 0, "low_confidence": 0, "two_faces": 2}.get(facts.behaviour, 1)
        if confident == 0:
            raise _lambda_error("detect", "NoFacesDetectedException", "")
        if confident > 1:
            raise _lambda_error("detect", "TooManyFacesDetectedException", "")
        detail = _face_detail(facts, all_attributes=True)
        for dimension in ("Pitch", "Roll", "Yaw"):
            if not -45 < detail["Pose"][dimension] < 45:
                raise _lambda_error("detect", "InvalidPoseDetectedException", dimension)
        if detail["Sunglasses"]["Value"]:
            raise _lambda_error("detect", "SunglassesDetectedException", "")
        return {"FaceDetails": detail}

    # search-faces ---------------------------------------------------------------------------------

    def _search(self, event: dict[str, Any], injected: Optional[str]) -> dict[str, Any]:
        self._lambda_service_fault("search", injected)
        user_id = _key(event, "UserId", "search")
        if self.version == "head" and event.get("Image") is None:
            bucket, name = _key(event, "Bucket", "search"), _key(event, "Name", "search")
            collection = self._collection_of(user_id)
            facts = self._rekognition_s3("search", bucket, name, injected)
        else:
            image = _image_bytes("search", _key(event, "Image", "search"))
            collection = self._collection_of(user_id)
            facts = self._rekognition_image("search", image, injected)
        with self._lock:
            self._paid_locked("search")
            candidates = [f for f in self._collection if f.collection == collection]
            matches = [(99.9, f) for f in candidates if f.person == facts.person]
            if not matches and self.stranger_similarity >= FACE_MATCH_THRESHOLD:
                matches = [(self.stranger_similarity, f) for f in candidates]
        self._function_fault("search", injected)
        face_matches = []
        for similarity, face in matches[:1]:  # MaxFaces=1
            face_matches.append(
                {
                    "Similarity": similarity,
                    "Face": {
                        "FaceId": face.face_id,
                        "BoundingBox": {"Width": 0.4, "Height": 0.5, "Left": 0.3, "Top": 0.2},
                        "ImageId": face.image_id,
                        "ExternalImageId": face.external_image_id,
                        "Confidence": 99.99,
                        "IndexFacesModelVersion": "6.0",
                        # RIV compares the id as sent with the stored (lower-cased) ExternalImageId.
                        "IsCallerUser": user_id == face.external_image_id,
                    },
                }
            )
        top = (
            face_matches[0]
            if face_matches
            else {
                "Similarity": 0,
                "Face": {"FaceId": "00000000-0000-0000-0000-000000000000", "ExternalImageId": NO_FACE_MATCH_ID},
            }
        )
        return {
            "SearchedFaceBoundingBox": "6.0",  # RIV puts FaceModelVersion here (sic)
            "SearchedFaceConfidence": 99.99,
            "FaceModelVersion": "6.0",
            "FaceMatches": face_matches,
            "TopMatch": top,
            "HasMatches": bool(face_matches),
        }

    # index-faces ----------------------------------------------------------------------------------

    def _index(self, event: dict[str, Any], injected: Optional[str]) -> dict[str, Any]:
        self._lambda_service_fault("index", injected)
        # FaceMetadata(event): each field in this order, so the first missing one is the KeyError.
        raw_id = _key(event, "UserId", "index")
        if not isinstance(raw_id, str):
            raise _lambda_error("index", "AttributeError", f"'{type(raw_id).__name__}' object has no attribute 'lower'")
        user_id = raw_id.lower().strip() if self.version == "head" else raw_id.lower()
        if self.version == "head":
            image_field = event.get("Image")
            image = _image_bytes("index", image_field) if isinstance(image_field, str) else None
            bucket = _lowered(_key(event, "Bucket", "index"), "index")
            name = _lowered(_key(event, "Name", "index"), "index")
            properties = _key(event, "Properties", "index")
        else:
            image = _image_bytes("index", _key(event, "Image", "index"))
            properties = event.get("Properties", {})
        collection = self._collection_of(user_id)
        if not user_id:  # botocore checks ExternalImageId's minimum length before sending
            raise _lambda_error(
                "index",
                "ParamValidationError",
                "Parameter validation failed:\nInvalid length for parameter ExternalImageId, value: 0, valid min"
                " length: 1",
            )
        if len(user_id) > EXTERNAL_IMAGE_ID_MAX or not EXTERNAL_IMAGE_ID.fullmatch(user_id):
            with self._lock:
                self._attempts["IndexFaces"] += 1
            raise _lambda_error(
                "index",
                "ClientError",
                "An error occurred (ValidationException) when calling the IndexFaces operation: 1 validation error "
                f"detected: Value '{user_id}' at 'externalImageId' failed to satisfy constraint: Member must satisfy "
                "regular expression pattern: [a-zA-Z0-9_.\\-:]+",
            )
        if image is None:  # RIV reads the object at the lower-cased Bucket/Name
            facts = self._rekognition_s3("index", bucket, name, injected)
        else:
            facts = self._rekognition_image("index", image, injected)
        if facts.behaviour == "unindexable":
            self._paid("index")
            raise _lambda_error("index", "NotImplementedError", "This sample only supports one indexed face.")
        with self._lock:
            self._paid_locked("index")
            face = self._add_face_locked(user_id, facts.person, collection)
        # storage.persist: the face is in the collection whatever happens to the table row.
        if injected in STORAGE_ERRORS:
            raise _lambda_error(
                "index",
                injected,
                "ProvisionedThroughputExceededException"
                if injected == "TransientError"
                else "ResourceNotFoundException",
            )
        self._function_fault("index", injected)
        if not hasattr(properties, "keys"):
            raise _lambda_error("index", "NotImplementedError", "AttributeError")
        with self._lock:
            self._put_item_locked(user_id, face.face_id, properties)
        detail = _face_detail(facts, all_attributes=False)
        return {
            "FaceModelVersion": "6.0",
            "FaceRecord": {
                "Face": {
                    "FaceId": face.face_id,
                    "BoundingBox": detail["BoundingBox"],
                    "ImageId": face.image_id,
                    "ExternalImageId": user_id,
                    "Confidence": detail["Confidence"],
                },
                "FaceDetail": detail,
            },
        }

    # Rekognition, S3, DynamoDB --------------------------------------------------------------------

    def _lambda_service_fault(self, step: str, injected: Optional[str]) -> None:
        if injected in LAMBDA_SERVICE_ERRORS:
            code = injected.split(".", 1)[1]
            raise _StepError(
                injected,
                f"Rate Exceeded. (Service: AWSLambda; Status Code: 429; Error Code: {code}; "
                f"Request ID: {uuid.uuid4()}; Proxy: null)",
            )

    def _function_fault(self, step: str, injected: Optional[str]) -> None:
        if injected and injected not in REKOGNITION_ERRORS | STORAGE_ERRORS | LAMBDA_SERVICE_ERRORS:
            raise _lambda_error(step, injected, f"injected {injected}")

    def _rekognition_image(self, step: str, image: bytes, injected: Optional[str]) -> _ImageFacts:
        """Rekognition given Image={"Bytes": ...}."""
        if not image:  # botocore refuses it before sending
            raise _lambda_error(
                step,
                "ParamValidationError",
                "Parameter validation failed:\nInvalid length for parameter Image.Bytes, value: 0, valid min length: 1",
            )
        with self._lock:
            self._attempts[OPERATIONS[step]] += 1
        if injected in REKOGNITION_ERRORS:
            raise _boto_error(step, injected)
        if len(image) > REKOGNITION_BYTES_LIMIT:
            raise _boto_error(step, "ImageTooLargeException")
        return self._check_image(step, image)

    def _check_image(self, step: str, image: bytes) -> _ImageFacts:
        facts = self._image_facts(image)
        if facts.format is None:
            raise _boto_error(step, "InvalidImageFormatException")
        if min(facts.width, facts.height) < REKOGNITION_MIN_SIDE:
            raise _boto_error(step, "InvalidParameterException")
        return facts

    def _rekognition_s3(self, step: str, bucket: Any, name: Any, injected: Optional[str]) -> _ImageFacts:
        """Rekognition given Image={"S3Object": {"Bucket", "Name"}} (no version: the object as it is now)."""
        with self._lock:
            self._attempts[OPERATIONS[step]] += 1
        if injected in REKOGNITION_ERRORS:
            raise _boto_error(step, injected)
        data = self._read_s3(bucket, name)
        if data is None:
            raise _boto_error(step, "InvalidS3ObjectException")
        if len(data) > REKOGNITION_S3_LIMIT:
            raise _boto_error(step, "ImageTooLargeException")
        return self._check_image(step, data)

    def _read_s3(self, bucket: Any, name: Any) -> Optional[bytes]:
        if not isinstance(bucket, str) or not isinstance(name, str):
            return None
        if self._fetch is not None:
            return self._fetch(bucket, name)
        if self._s3 is not None:
            try:
                return self._s3.get_object(Bucket=bucket, Key=name)["Body"].read()
            except Exception:  # NoSuchKey, NoSuchBucket, AccessDenied: Rekognition says InvalidS3Object
                return None
        return None

    def _collection_of(self, user_id: Any) -> int:
        if self.partition_count <= 1:
            return 0
        # RIV: hash(user_id) % partition_count, in a Python process with its own random hash seed
        # (no PYTHONHASHSEED): each Lambda instance picks its own collection for the same id.
        salt = self._rng.random()
        return hash((salt, user_id)) % self.partition_count

    def _image_facts(self, image: bytes) -> _ImageFacts:
        digest = _sha256(image)
        with self._lock:
            cached = self._image_cache.get(digest)
            behaviour = self._behaviours.get(digest)
            person = self._persons.get(digest)
        if cached is None:
            cached = _inspect(image, digest)
            with self._lock:
                self._image_cache[digest] = cached
        if behaviour is None and person is None:
            return cached
        return _ImageFacts(
            cached.format, cached.width, cached.height, behaviour or cached.behaviour, person or cached.person
        )

    def _paid(self, step: str) -> None:
        with self._lock:
            self._paid_locked(step)

    def _paid_locked(self, step: str) -> None:
        self._calls[OPERATIONS[step]] += 1

    def _add_face_locked(self, external_id: str, person: str, collection: int) -> _Face:
        face = _Face(str(uuid.uuid4()), str(uuid.uuid4()), external_id, person, collection)
        self._collection.append(face)
        return face

    def _put_item_locked(self, user_id: str, face_id: str, properties: Any) -> None:
        # Unconditional PutItem: a second face for the same user is a second row.
        self._table.setdefault(f"User::{user_id.lower()}", {})[f"Face::{face_id.lower()}"] = {
            "property_bag": {str(k): str(v) for k, v in properties.items()},
        }

    # -- HTTP bookkeeping --------------------------------------------------------------------------

    def _received(self, record: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(record)
            self._in_flight += 1
            self._max_concurrency = max(self._max_concurrency, self._in_flight)

    def _finished(self) -> None:
        with self._lock:
            self._in_flight -= 1


# --------------------------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True)
class _HttpAnswer:
    status: int
    payload: Any


class _Handler(BaseHTTPRequestHandler):
    riv: RivStandIn
    protocol_version = "HTTP/1.1"  # keep-alive, like API Gateway

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `requests`
        pass

    def _handle(self) -> None:
        arrived = time.time()  # as its request line and headers arrive, before the body is read
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        record = RecordedRequest(self.command, path, arrived, {k.lower(): v for k, v in self.headers.items()})
        riv = self.riv
        riv._received(record)
        try:
            route = riv._route(self.command, path)
            if route is None:
                self.answer(record, 403, MISSING_TOKEN)
            elif route == "cors":
                self.answer(record, 204, None)
            elif riv.api_key is not None and self.headers.get(riv.api_key_header) != riv.api_key:
                self.answer(record, 403, FORBIDDEN)
            elif route == "register":
                riv._register(self, record, raw)
            elif route == "check-userid":
                riv._check_userid(self, record, raw)
            else:
                self.answer(record, 501, {"message": f"/{route} is not modelled by the stand-in"})
        finally:
            riv._finished()

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def answer(self, record: RecordedRequest, status: int, payload: Any) -> None:
        body = b"" if payload is None else json.dumps(payload).encode("utf-8")
        record.status = status  # recorded before the client can read the answer
        record.answered_at = time.time()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def drop(self, record: RecordedRequest) -> None:
        record.answered_at = time.time()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------
# Helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse_mapping_body(raw: bytes) -> Any:
    """The body as `$input.json('$')` sees it: empty is {}, non-JSON is API Gateway's 400."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        return _HttpAnswer(400, {"message": f"Could not parse request body into json: {error}"})


def _reserialised(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _execution_input(body: Any) -> str:
    return '{"inputRequest":' + json.dumps(body, separators=(",", ":")) + "}"


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def _redact(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    out = dict(body)
    image = out.get("Image")
    if isinstance(image, str):
        out["Image"] = f"<{len(image)} base64 chars, sha256 {hashlib.sha256(image.encode()).hexdigest()[:16]}>"
    return out


def _image_bytes(step: str, value: Any) -> bytes:
    try:
        return base64.b64decode(value)  # as RIV calls it: not validating, stray characters are dropped
    except (binascii.Error, TypeError, ValueError) as error:
        raise _lambda_error(step, type(error).__name__, str(error)) from None


def _key(event: dict[str, Any], key: str, step: str) -> Any:
    if key not in event:
        raise _lambda_error(step, "KeyError", repr(key))
    return event[key]


def _lowered(value: Any, step: str) -> str:
    if not isinstance(value, str):
        raise _lambda_error(step, "AttributeError", f"'{type(value).__name__}' object has no attribute 'lower'")
    return value.lower()


def _lambda_error(step: str, error_type: str, message: str) -> _StepError:
    cause = {
        "errorMessage": message,
        "errorType": error_type,
        "requestId": str(uuid.uuid4()),
        "stackTrace": [
            f'  File "/var/task/handler.py", line 90, in function_main\n    # {FUNCTIONS[step]}\n',
        ],
    }
    return _StepError(error_type, json.dumps(cause))


def _boto_error(step: str, code: str) -> _StepError:
    name = code if code in REKOGNITION_ERRORS else "ClientError"
    retries = (
        " (reached max retries: 4)"
        if code in {"ThrottlingException", "ProvisionedThroughputExceededException", "InternalServerError"}
        else ""
    )
    operation = OPERATIONS[step]
    message = (
        f"An error occurred ({code}) when calling the {operation} operation{retries}: {BOTO_MESSAGES.get(code, code)}"
    )
    return _lambda_error(step, name, message)


def _inspect(image: bytes, digest: str) -> _ImageFacts:
    """What Rekognition would see in these bytes, and the test convention's face."""
    try:
        with PILImage.open(io.BytesIO(image)) as img:
            fmt = img.format if img.format in ("PNG", "JPEG") else None
            width, height = img.size
            marker = img.info.get("riv-face") or img.info.get("comment") or ""
            img.load()  # a truncated or corrupt image is not an image
    except Exception:
        return _ImageFacts(None, 0, 0, "one_face", digest)
    if isinstance(marker, bytes):
        marker = marker.decode("utf-8", "replace")
    if marker.startswith("riv-face:"):
        marker = marker[len("riv-face:") :]
    behaviour, person = "one_face", digest
    for part in filter(None, (p.strip() for p in str(marker).split(";"))):
        if part.startswith("person="):
            person = "person:" + part[len("person=") :]
        elif part in BEHAVIOURS:
            behaviour = part
    return _ImageFacts(fmt, width, height, behaviour, person)


def _face_detail(facts: _ImageFacts, *, all_attributes: bool) -> dict[str, Any]:
    """A FaceDetail as DetectFaces (Attributes=ALL) or IndexFaces (DEFAULT) returns it, sized realistically."""
    rng = random.Random(facts.person)
    pose = {"Roll": rng.uniform(-10, 10), "Yaw": rng.uniform(-10, 10), "Pitch": rng.uniform(-10, 10)}
    if facts.behaviour == "pose":
        pose["Yaw"] = 62.5
    detail: dict[str, Any] = {
        "BoundingBox": {
            "Width": rng.uniform(0.3, 0.5),
            "Height": rng.uniform(0.4, 0.6),
            "Left": rng.uniform(0.2, 0.3),
            "Top": rng.uniform(0.1, 0.2),
        },
        "Landmarks": [
            {"Type": t, "X": rng.uniform(0.2, 0.8), "Y": rng.uniform(0.2, 0.8)}
            for t in (
                "eyeLeft eyeRight mouthLeft mouthRight nose leftEyeBrowLeft leftEyeBrowRight leftEyeBrowUp "
                "rightEyeBrowLeft rightEyeBrowRight rightEyeBrowUp leftEyeLeft leftEyeRight leftEyeUp leftEyeDown "
                "rightEyeLeft rightEyeRight rightEyeUp rightEyeDown noseLeft noseRight mouthUp mouthDown leftPupil "
                "rightPupil upperJawlineLeft midJawlineLeft chinBottom midJawlineRight upperJawlineRight"
            ).split()
        ],
        "Pose": pose,
        "Quality": {"Brightness": rng.uniform(40, 90), "Sharpness": rng.uniform(40, 95)},
        "Confidence": 99.99 if facts.behaviour != "low_confidence" else 72.4,
    }
    if not all_attributes:
        return detail
    value = lambda v: {"Value": v, "Confidence": rng.uniform(80, 99.9)}  # noqa: E731
    detail.update(
        {
            "AgeRange": {"Low": 25, "High": 35},
            "Smile": value(False),
            "Eyeglasses": value(False),
            "Sunglasses": value(facts.behaviour == "sunglasses"),
            "Gender": value("Female"),
            "Beard": value(False),
            "Mustache": value(False),
            "EyesOpen": value(True),
            "MouthOpen": value(False),
            "Emotions": [
                {"Type": e, "Confidence": rng.uniform(0, 100)}
                for e in ("CALM", "HAPPY", "SAD", "ANGRY", "CONFUSED", "DISGUSTED", "SURPRISED", "FEAR")
            ],
            "FaceOccluded": value(False),
            "EyeDirection": {
                "Yaw": rng.uniform(-5, 5),
                "Pitch": rng.uniform(-5, 5),
                "Confidence": rng.uniform(80, 99.9),
            },
        }
    )
    return detail


def _lambda_result(payload: dict[str, Any]) -> dict[str, Any]:
    """LambdaInvoke's result as the state machine stores it under its ResultPath."""
    request_id = str(uuid.uuid4())
    size = str(len(json.dumps(payload)))
    headers = {
        "Connection": "keep-alive",
        "Content-Length": size,
        "Content-Type": "application/json",
        "Date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
        "X-Amz-Executed-Version": "$LATEST",
        "x-amzn-Remapped-Content-Length": "0",
        "x-amzn-RequestId": request_id,
        "X-Amzn-Trace-Id": f"root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};sampled=1",
    }
    return {
        "ExecutedVersion": "$LATEST",
        "Payload": payload,
        "SdkHttpMetadata": {
            "AllHttpHeaders": {k: [v] for k, v in headers.items()},
            "HttpHeaders": headers,
            "HttpStatusCode": 200,
        },
        "SdkResponseMetadata": {"RequestId": request_id},
        "StatusCode": 200,
    }


# ---- the stand-in in a process of its own ----


@dataclass(frozen=True)
class SeenRequest:
    """What a stand-in in its own process saw of one request."""

    path: str
    received_at: float
    status: Optional[int]
    user_id: Optional[str]
    headers: dict[str, str]


class RivStandInProcess:
    """The stand-in served by a process of its own, as RIV is: the load's processes and the test's
    moto server then share no interpreter (and no GIL) with it, so its clock sees calls as they
    arrive. Observations are read when it stops: `requests`, `registrations`, `workflow_starts`.

        with RivStandInProcess(api_key="k") as riv:
            ... riv.url ...
        riv.registrations
    """

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._process: Any = None
        self.url = ""
        self.requests: list[SeenRequest] = []
        self.registrations: dict[str, int] = {}
        self.workflow_starts: list[float] = []

    def __enter__(self) -> "RivStandInProcess":
        import subprocess
        import sys

        self._process = subprocess.Popen(
            [sys.executable, "-m", "rivbulk_pipeline_tests.support.riv_standin", json.dumps(self._options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.url = self._process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self._process.kill()
            raise RuntimeError(f"the stand-in did not start: {self.url!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._process is None:
            return
        out, _ = self._process.communicate("stop\n", timeout=60)
        seen = json.loads(out)
        self.requests = [SeenRequest(**r) for r in seen["requests"]]
        self.registrations = seen["registrations"]
        self.workflow_starts = seen["workflow_starts"]
        self._process = None


def _serve_until_stdin_says_stop(options: dict[str, Any]) -> None:
    import sys

    with RivStandIn(**options) as riv:
        print(riv.url, flush=True)
        sys.stdin.readline()
        riv.wait_for_workflows(timeout=30)
        seen = {
            "requests": [
                {
                    "path": r.path,
                    "received_at": r.received_at,
                    "status": r.status,
                    "user_id": r.user_id,
                    "headers": r.headers,
                }
                for r in riv.requests
            ],
            "registrations": riv.registrations,
            "workflow_starts": riv.workflow_starts,
        }
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    import sys

    _serve_until_stdin_says_stop(json.loads(sys.argv[1]))
