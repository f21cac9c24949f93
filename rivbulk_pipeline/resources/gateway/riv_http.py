"""The RIV UserPortal gateway over HTTP: one attempt per call, a timeout on every call, API key or SigV4."""
from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Optional

import boto3
import dagster as dg
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError, ClientError
from dagster_aws.secretsmanager import SecretsManagerResource
from pydantic import Field, PrivateAttr
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from ...core.errors import DeploymentError
from ...core.model import GatewayResult

from .base import (
    _no_pace,
    STEP_FUNCTIONS_PAYLOAD_LIMIT,
    GatewayResource,
    _AUTH_MODES,
    _SETUP_LOCK,
    _Rejected,
    _checked_input,
)

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


_DEPLOYMENT_FAULTS = {
    401: "the gateway refused our credentials: check RIVBULK_GATEWAY_AUTH and the API key or IAM identity",
    403: "the gateway forbade the call: a wrong or missing API key, a missing execute-api:Invoke permission,"
    " or a wrong stage in RIVBULK_GATEWAY_URL",
    404: "no such resource: RIVBULK_GATEWAY_URL names the wrong API, stage or path (rivbulk posts to <url>/register)",
    405: "method not allowed: RIVBULK_GATEWAY_URL does not point at the UserPortal API's /register resource",
}


def _interpret(response: requests.Response, endpoint: str) -> GatewayResult:
    """The outcome for this image, or DeploymentError when the answer is about the deployment."""
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
    # No body text in these errors: API Gateway's auth errors can quote the Authorization header.
    if code in _DEPLOYMENT_FAULTS:
        raise DeploymentError(f"POST {endpoint} answered HTTP {code}: {_DEPLOYMENT_FAULTS[code]}")
    if 300 <= code < 400:
        where = response.headers.get("Location", "elsewhere")
        raise DeploymentError(
            f"POST {endpoint} answered HTTP {code}, a redirect to {where}: RIVBULK_GATEWAY_URL is not the API's"
            " invoke URL (check the scheme, host and stage)"
        )
    if 400 <= code < 500:
        # A 400 is about this request's content (the image or the user): permanent, with the gateway's reason.
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        reason = _gateway_reason(answer) if isinstance(answer, dict) else ""
        return GatewayResult.permanent(f"HTTP {code}: {reason}" if reason else f"HTTP {code}")
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
    api_key_secret_id: Optional[str] = Field(
        default=None, description="ARN or name of a Secrets Manager secret whose string is the API key (instead of api_key)"
    )
    secrets_manager: Optional[SecretsManagerResource] = Field(
        default=None, description="dagster-aws's Secrets Manager resource the key is read through"
    )
    api_key_header: str = Field(default="x-api-key", description="Header carrying the API key")
    region_name: Optional[str] = Field(default=None, description="Region for sigv4 (default: the AWS chain's)")
    profile_name: Optional[str] = Field(default=None, description="AWS profile whose credentials sign (sigv4)")
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
            raise DeploymentError("RivHttpGateway.url must start with http:// or https://")
        if not self.timeout_seconds > 0:
            raise DeploymentError("RivHttpGateway.timeout_seconds must be > 0")
        mode = self.auth.lower()
        if mode not in _AUTH_MODES:
            raise DeploymentError(f"RivHttpGateway.auth must be one of {', '.join(_AUTH_MODES)}, not {self.auth!r}")
        if mode == "api_key":
            if self.api_key_secret_id:
                return _ApiKeyAuth(self.api_key_header, self._key_from_secrets_manager())
            if not self.api_key:
                raise DeploymentError(
                    "RivHttpGateway: auth='api_key' needs api_key (from an environment variable) or api_key_secret_id"
                )
            # Built outside a Dagster run, the field still holds the EnvVar itself: read its value,
            # never send the variable's name as the key.
            key = self.api_key.get_value() if isinstance(self.api_key, dg.EnvVar) else self.api_key
            if not key:
                raise DeploymentError("RivHttpGateway: auth='api_key' needs api_key (its environment variable is empty)")
            return _ApiKeyAuth(self.api_key_header, key)
        if mode == "sigv4":
            session = boto3.Session(region_name=self.region_name, profile_name=self.profile_name)
            credentials = session.get_credentials()
            if credentials is None:
                raise DeploymentError("RivHttpGateway: auth='sigv4' found no AWS credentials in the standard chain")
            region = self.region_name or session.region_name
            if not region:
                raise DeploymentError("RivHttpGateway: auth='sigv4' needs region_name (or AWS_REGION)")
            return _SigV4RequestsAuth(credentials, region)
        return None

    def _key_from_secrets_manager(self) -> str:
        """The key, read once per resource; only the secret's id is configuration (and so stored)."""
        secrets = self.secrets_manager or SecretsManagerResource()
        secret_id = self.api_key_secret_id
        try:
            value = secrets.get_client().get_secret_value(SecretId=secret_id).get("SecretString")
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "error")
            raise DeploymentError(f"RivHttpGateway: cannot read the API key secret {secret_id!r} from Secrets Manager: {code}") from None
        except BotoCoreError as error:
            raise DeploymentError(
                f"RivHttpGateway: cannot read the API key secret {secret_id!r} from Secrets Manager: {type(error).__name__}"
            ) from None
        if not value or not value.strip():
            raise DeploymentError(f"RivHttpGateway: the secret {secret_id!r} has no SecretString (the API key as plain text)")
        return value.strip()

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

    def register(
        self, user_id: str, image: bytes, properties: Mapping[str, str], pace: Callable[[], object] = _no_pace
    ) -> GatewayResult:
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
        pace()  # the body is ready: the call leaves as soon as the limiter lets it
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
            return _interpret(response, self.endpoint)

    def close(self) -> None:
        """Close pooled connections (also done at the end of a Dagster step)."""
        with _SETUP_LOCK:
            if self._session is not None:
                self._session.close()
                self._session = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()
