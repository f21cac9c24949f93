"""RIV's register contract as its code really behaves (FACTS.md): the request body, what RIV cannot
take, and what an answer means. Pure: both gateways (HTTP and embedded) go through it.

- The body carries `Image` (base64) and `Bucket`/`Name`: versions before RIV's 98f4a0d read `Image`
  only, later ones read `Bucket` and `Name` unconditionally and use `Image` when present.
  By reference (no `Image`) RIV reads the object from S3 itself.
- API Gateway's mapping breaks on `'` anywhere in the body (HTTP 500, every time), and Step
  Functions holds the request plus DetectFaces' result to 256 KiB: such bodies are refused here.
- Every finished workflow is an HTTP 200 whose `status` and `error` decide.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, Optional

from ..errors import DeploymentError
from ..model import GatewayResult
from .gateway_errors import DEPLOYMENT_CAUSES, ErrorKind, error_kind, shown_code

STEP_FUNCTIONS_STATE_LIMIT = 262_144  # 256 KiB: an Express workflow's input and each state's data
# DetectFaces' full result (every attribute and landmark of one face) joins the request in the
# workflow's state: a few KB; kept generously so that a body that passes here passes there.
DETECT_FACES_RESULT_RESERVE = 16_384
INLINE = "inline"
BY_REFERENCE = "by_reference"
IMAGE_MODES = (INLINE, BY_REFERENCE)

# Reason codes of our own for bodies RIV cannot take (refused before the call, permanent).
APOSTROPHE = "apostrophe_in_request"
TOO_LARGE_FOR_RIV = "too_large_for_riv"
KEY_NOT_READABLE = "key_not_readable_by_riv"
# The registry answered in a way that says nothing about this user.
UNREADABLE_ANSWER = "unreadable_answer"


def register_body(
    user_id: str, image: Optional[bytes], properties: Mapping[str, str], bucket: str, key: str
) -> dict[str, Any]:
    """The register request both RIV versions take. `image=None`: by reference.

    In inline mode RIV reads `Name` but never uses it, so an apostrophe in the key (which the
    mapping cannot take) is sent percent-encoded; by reference the key must be sent as it is.
    """
    body: dict[str, Any] = {"UserId": user_id, "Properties": dict(properties), "Bucket": bucket}
    if image is None:
        body["Name"] = key
    else:
        body["Name"] = key.replace("'", "%27")
        body["Image"] = base64.b64encode(image).decode("ascii")
    return body


def properties_problem(properties: Mapping[str, str]) -> Optional[str]:
    """Why RIV's mapping cannot pass these properties on, or None (never quoting them)."""
    for name, value in properties.items():
        if "'" in name or "'" in value:
            return (
                f"{APOSTROPHE}: a property key or value holds an apostrophe ('), which RIV's API Gateway mapping"
                " cannot pass on (HTTP 500 every time); remove it from the properties"
            )
    return None


def body_problem(
    body: Mapping[str, Any], encoded: bytes, state_limit: int = STEP_FUNCTIONS_STATE_LIMIT
) -> Optional[str]:
    """Why RIV cannot take this request (a permanent reason), or None."""
    problem = properties_problem(body.get("Properties", {}))
    if problem:
        return problem
    if "Image" not in body:
        key = body["Name"]
        if "'" in key or key != key.lower():
            return (
                f"{KEY_NOT_READABLE}: by reference, RIV lower-cases the key (and its mapping cannot take an"
                " apostrophe), so it cannot read this object; register it inline or rename it"
            )
    budget = state_limit - DETECT_FACES_RESULT_RESERVE
    if len(encoded) > budget:
        return (
            f"{TOO_LARGE_FOR_RIV}: the request is {len(encoded):,} bytes; with DetectFaces' result it would exceed"
            f" Step Functions' {state_limit:,}-byte state (at most {budget:,} bytes here): use a smaller image,"
            " or RIVBULK_GATEWAY_IMAGE_MODE=by_reference"
        )
    return None


def largest_inline_image(state_limit: int = STEP_FUNCTIONS_STATE_LIMIT) -> int:
    """Image bytes above which an inline request cannot fit, whatever the rest holds."""
    return (state_limit - DETECT_FACES_RESULT_RESERVE) * 3 // 4


def encode_body(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _printable(text: str, limit: int = 300) -> str:
    return "".join(c if c.isprintable() else " " for c in text.strip())[:limit]


def _cause_message(cause: object) -> str:
    """The message of a Lambda error (`cause` is Lambda's JSON), or the cause as text."""
    if not isinstance(cause, str) or not cause.strip():
        return ""
    try:
        parsed = json.loads(cause)
    except ValueError:
        return _printable(cause)
    if isinstance(parsed, Mapping):
        for field in ("errorMessage", "message", "Message"):
            if isinstance(parsed.get(field), str):
                return _printable(parsed[field])
    return _printable(cause)


def result_of_answer(answer: object, endpoint: str) -> GatewayResult:
    """The outcome of an HTTP 200 from RIV's register (StartSyncExecution's fields).

    Raises DeploymentError when the error says the deployment is wrong.
    """
    if not isinstance(answer, Mapping):
        return GatewayResult.transient(f"{UNREADABLE_ANSWER}: HTTP 200 whose body is not a JSON object", unknown=True)
    status = str(answer.get("status", "")).upper()
    if status == "SUCCEEDED":
        return GatewayResult.succeeded()
    if status == "TIMED_OUT":
        # The workflow may have stopped after IndexFaces: the outcome is unknown.
        return GatewayResult.transient("TIMED_OUT: RIV's register workflow timed out", unknown=True)
    if status != "FAILED":
        return GatewayResult.transient(
            f"{UNREADABLE_ANSWER}: HTTP 200 without a SUCCEEDED, FAILED or TIMED_OUT status", unknown=True
        )
    error = answer.get("error")
    error = _printable(error, 100) if isinstance(error, str) else ""
    message = _cause_message(answer.get("cause"))
    if not error:
        return GatewayResult.transient(f"gateway_error: FAILED without an error name; {message}".rstrip("; "))
    if error == "ClientError" and "ValidationException" in message:
        # Rekognition refused a parameter it does not model by name: the user id or the image.
        return GatewayResult.permanent(f"ClientError: {message}")
    kind = error_kind(error)
    if kind is ErrorKind.DEPLOYMENT:
        cause = DEPLOYMENT_CAUSES.get(error, "")
        raise DeploymentError(f"POST {endpoint} answered FAILED with error {error}: {cause}".rstrip(": "))
    code = shown_code(error)
    text = ": ".join(part for part in (code, error if code != error else "", message) if part)
    if kind is ErrorKind.PERMANENT:
        return GatewayResult.permanent(text)
    return GatewayResult.transient(text)


# HTTP answers other than 200. API Gateway's own errors carry no reason of the user's.
_DEPLOYMENT_STATUS = {
    401: "the gateway refused our credentials: check RIVBULK_GATEWAY_AUTH and the API key or IAM identity",
    403: "the gateway forbade the call: no such route (RIV answers 403 for unknown paths), a wrong or missing API"
    " key, a missing execute-api:Invoke permission, or a wrong stage in RIVBULK_GATEWAY_URL",
    404: "no such resource: RIVBULK_GATEWAY_URL names the wrong API, stage or path (rivbulk posts to <url>/register)",
    405: "method not allowed: RIVBULK_GATEWAY_URL does not point at the UserPortal API's /register resource",
}
# Passing, and the request never reached the workflow (or was refused before it ran).
_TRANSIENT_STATUS = {408, 409, 425, 429, 500, 503}
# The workflow may have run and registered the user: settle before calling again.
_UNKNOWN_STATUS = {502, 504}


def result_of_status(code: int, endpoint: str, location: Optional[str], reached_before: bool) -> GatewayResult:
    """The outcome of a non-200 answer. `reached_before`: this endpoint answered 200 earlier in
    this process, so a 403 concerns this request (a WAF rule matching its body), not the deployment."""
    if code == 403 and reached_before:
        return GatewayResult.permanent(
            "http_403: the gateway refused this request although it accepted others (a WAF rule matching its body?)"
        )
    if code in _DEPLOYMENT_STATUS:
        raise DeploymentError(f"POST {endpoint} answered HTTP {code}: {_DEPLOYMENT_STATUS[code]}")
    if 300 <= code < 400:
        raise DeploymentError(
            f"POST {endpoint} answered HTTP {code}, a redirect to {location or 'elsewhere'}: RIVBULK_GATEWAY_URL is"
            " not the API's invoke URL (check the scheme, host and stage)"
        )
    if code in _UNKNOWN_STATUS:
        return GatewayResult.transient(
            f"http_{code}: the registration may have gone on after the gateway gave up", unknown=True
        )
    if code in _TRANSIENT_STATUS or code >= 500:
        return GatewayResult.transient(f"http_{code}")
    if 400 <= code < 500:
        # RIV's API Gateway validates nothing, so a 4xx is about this request's content.
        return GatewayResult.permanent(f"http_{code}: the gateway refused this request")
    return GatewayResult.transient(f"http_{code}: unexpected answer", unknown=True)


def user_exists_from_answer(answer: object) -> Optional[bool]:
    """check-userid's answer: `{"Reason": "User Exist"}` / `{"Reason": "User not Exist"}`; None if neither."""
    reason = answer.get("Reason") if isinstance(answer, Mapping) else None
    if reason == "User Exist":
        return True
    if reason == "User not Exist":
        return False
    return None
