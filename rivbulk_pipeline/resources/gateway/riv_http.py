"""The RIV UserPortal gateway over HTTP: one attempt per call, a timeout on every call, API key or SigV4."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Optional

import boto3
import dagster as dg
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from dagster_aws.secretsmanager import SecretsManagerResource
from pydantic import Field, PrivateAttr
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from ...core.errors import DeploymentError
from ...core.model import GatewayResult, ObjectRef
from ...core.rules import riv_protocol
from ...core.rules.riv_protocol import IMAGE_MODES, INLINE, STEP_FUNCTIONS_STATE_LIMIT
from ..aws import read_secret_string
from .base import _AUTH_MODES, _SETUP_LOCK, GatewayResource, _checked_input, _no_pace, _Rejected


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


def _result_of_exception(exc: requests.RequestException, timeout: float) -> GatewayResult:
    """A call that got no answer. Before the request left (no connection): nothing happened.
    After (a read timeout, a dropped connection): the workflow may have registered the user."""
    if isinstance(exc, requests.ConnectTimeout):
        return GatewayResult.transient(f"timeout: no connection within {timeout:g}s")
    if isinstance(exc, requests.Timeout):
        return GatewayResult.transient(f"timeout: no answer within {timeout:g}s", unknown=True)
    chain = _failure_chain(exc)
    names = {type(e).__name__ for e in chain}
    if names & {"NewConnectionError", "NameResolutionError", "ConnectionRefusedError", "gaierror"}:
        return GatewayResult.transient(f"connection_error: could not connect ({type(chain[-1]).__name__})")
    if any(isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ for e in chain):
        return GatewayResult.transient(f"timeout: no answer within {timeout:g}s", unknown=True)
    return GatewayResult.transient(f"connection_error: the connection broke ({type(chain[-1]).__name__})", unknown=True)


class RivHttpGateway(GatewayResource):
    """The RIV UserPortal gateway: `POST <url>/register` (core.rules.riv_protocol says what is sent and
    what each answer means) and `POST <url>/check-userid` to settle an unknown outcome.

    One attempt per call, a timeout on every call, one pooled `requests.Session` shared by the
    caller's threads.
    """

    url: str = Field(description="The UserPortal base URL; register is POSTed to <url>/register")
    auth: str = Field(default="none", description="none, api_key or sigv4")
    api_key: Optional[str] = Field(
        default=None, repr=False, description="API key for auth=api_key; pass dg.EnvVar, never a literal"
    )
    api_key_secret_id: Optional[str] = Field(
        default=None,
        description="ARN or name of a Secrets Manager secret whose string is the API key (instead of api_key)",
    )
    secrets_manager: Optional[SecretsManagerResource] = Field(
        default=None, description="dagster-aws's Secrets Manager resource the key is read through"
    )
    api_key_header: str = Field(default="x-api-key", description="Header carrying the API key")
    region_name: Optional[str] = Field(default=None, description="Region for sigv4 (default: the AWS chain's)")
    profile_name: Optional[str] = Field(default=None, description="AWS profile whose credentials sign (sigv4)")
    timeout_seconds: float = Field(default=30.0, description="Connect and read timeout of each call")
    max_payload_bytes: int = Field(
        default=STEP_FUNCTIONS_STATE_LIMIT,
        description="Step Functions' state limit the request plus DetectFaces' result must fit (256 KiB)",
    )
    image_mode: str = Field(default=INLINE, description="inline (the image in the body) or by_reference (RIV reads S3)")
    pool_size: int = Field(default=32, description="Pooled connections kept: about the number of caller threads")

    _session: Optional[requests.Session] = PrivateAttr(default=None)
    _auth: Optional[AuthBase] = PrivateAttr(default=None)
    _reached: threading.Event = PrivateAttr(default_factory=threading.Event)  # a 200 from /register seen
    _no_check_route: threading.Event = PrivateAttr(default_factory=threading.Event)

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/register"

    @property
    def check_endpoint(self) -> str:
        return self.url.rstrip("/") + "/check-userid"

    @property
    def needs_image_bytes(self) -> bool:
        return self.image_mode == INLINE

    def _build_auth(self) -> Optional[AuthBase]:
        # Configuration errors are not per-user failures: they raise, so the run stops loudly.
        if not self.url.lower().startswith(("http://", "https://")):
            raise DeploymentError("RivHttpGateway.url must start with http:// or https://")
        if not self.timeout_seconds > 0:
            raise DeploymentError("RivHttpGateway.timeout_seconds must be > 0")
        if self.image_mode not in IMAGE_MODES:
            raise DeploymentError(
                f"RivHttpGateway.image_mode must be one of {', '.join(IMAGE_MODES)}, not {self.image_mode!r}"
            )
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
            return _ApiKeyAuth(self.api_key_header, _checked_key(key, "RIVBULK_GATEWAY_API_KEY"))
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
        secret_id = self.api_key_secret_id
        value = read_secret_string(
            self.secrets_manager, secret_id, f"RivHttpGateway: cannot read the API key secret {secret_id!r}"
        )
        if not value or not value.strip():
            raise DeploymentError(
                f"RivHttpGateway: the secret {secret_id!r} has no SecretString (the API key as plain text)"
            )
        return _checked_key(value, f"the secret {secret_id!r}")

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
        self,
        user_id: str,
        image: Optional[bytes],
        properties: Mapping[str, str],
        pace: Callable[[], object] = _no_pace,
        *,
        source: Optional[ObjectRef] = None,
    ) -> GatewayResult:
        inline = self.image_mode == INLINE
        try:
            _, props = _checked_input(user_id, image if inline else None, properties, self.user_id_pattern)
        except _Rejected as exc:
            return GatewayResult.permanent(exc.reason)
        body = riv_protocol.register_body(
            user_id.lower(),
            image if inline else None,
            props,
            source.bucket if source else "",
            source.key if source else "",
        )
        encoded = riv_protocol.encode_body(body)
        problem = riv_protocol.body_problem(body, encoded, self.max_payload_bytes)
        if problem:
            return GatewayResult.permanent(problem)
        session, auth = self._client()
        pace()  # the body is ready: the call leaves as soon as the limiter lets it
        try:
            response = self._post(session, auth, self.endpoint, encoded)
        except requests.RequestException as exc:
            return _result_of_exception(exc, self.timeout_seconds)
        with response:
            if response.status_code != 200:
                return riv_protocol.result_of_status(
                    response.status_code, self.endpoint, response.headers.get("Location"), self._reached.is_set()
                )
            self._reached.set()
            try:
                answer = response.json()
            except ValueError:
                answer = None
            return riv_protocol.result_of_answer(answer, self.endpoint)

    def user_exists(self, user_id: str) -> Optional[bool]:
        """Ask RIV's check-userid whether the (lower-cased) user is registered; None when this RIV
        version has no such route or the question got no answer."""
        if self._no_check_route.is_set():
            return None
        session, auth = self._client()
        try:
            response = self._post(
                session, auth, self.check_endpoint, riv_protocol.encode_body({"UserId": user_id.lower()})
            )
        except requests.RequestException:
            return None
        with response:
            if response.status_code in (403, 404):  # RIV answers 403 for a route it does not have
                self._no_check_route.set()
                return None
            if response.status_code != 200:
                return None
            try:
                return riv_protocol.user_exists_from_answer(response.json())
            except ValueError:
                return None

    def _post(self, session: requests.Session, auth: Optional[AuthBase], url: str, body: bytes) -> requests.Response:
        timeout = self.timeout_seconds
        return session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            auth=auth,
            timeout=(timeout, timeout),
            allow_redirects=False,
        )

    def close(self) -> None:
        """Close pooled connections (also done at the end of a Dagster step)."""
        with _SETUP_LOCK:
            if self._session is not None:
                self._session.close()
                self._session = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()


def _checked_key(key: Optional[str], where: str) -> str:
    """The API key without surrounding whitespace (a file's trailing newline); refused when what is
    left cannot be a header value. The error names where the key came from, never the key."""
    stripped = (key or "").strip()
    if not stripped:
        raise DeploymentError(f"RivHttpGateway: auth='api_key' needs a key, and {where} is empty")
    if any(not c.isprintable() or c.isspace() or ord(c) > 126 for c in stripped):
        raise DeploymentError(
            f"RivHttpGateway: {where} holds whitespace, a control or a non-ASCII character inside the key;"
            " an API key is printable ASCII"
        )
    return stripped
