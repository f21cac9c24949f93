"""The AWS layer: boto3 clients configured the way dagster-aws configures them.

`AwsClients` *is* dagster-aws's `S3Resource` (region, endpoint, profile, max attempts, SSL,
explicit keys: the fields a Dagster user already knows), plus what a bulk load needs that
`S3Resource.get_client()` does not set: the retry mode, the connection pool (botocore's default
of 10 would cap 32 concurrent tag reads) and timeouts. Every AWS adapter (S3 store, DynamoDB
history, Secrets Manager) builds its client from one instance of it, so one configuration holds
for all of them. Credentials: the standard chain unless keys are configured.
"""

from __future__ import annotations

import threading
from typing import Any, Literal, Optional

import boto3
import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.loaders import Loader, create_loader
from dagster_aws.s3 import S3Resource
from pydantic import Field

_LOADER: Optional[Loader] = None
_LOADER_LOCK = threading.Lock()


def error_code(error: Any) -> str:
    """The AWS error code of a botocore ClientError (never its message: it may echo values)."""
    return str(error.response.get("Error", {}).get("Code", "Unknown"))


def _shared_loader() -> Loader:
    """One botocore data loader per process: it caches parsed service models, which otherwise
    every new session reads and parses again (a noticeable pause per client)."""
    global _LOADER
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = create_loader()
        return _LOADER


class AwsClients(S3Resource):
    """dagster-aws's S3Resource with the retry mode, connection pool and timeouts every rivbulk
    client shares. `get_client()` is the S3 client; `client(service)` any other."""

    max_attempts: int = Field(default=8, description="Attempts per call, the first included (botocore retries).")
    retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        default="standard", description="botocore's retry mode: standard backs off on throttling and 5xx."
    )
    max_pool_connections: int = Field(default=32, description="HTTP connections kept per client.")
    connect_timeout: float = Field(default=5, description="Seconds to open a connection.")
    read_timeout: float = Field(default=60, description="Seconds to wait for data on an open connection.")

    def client(self, service: str, **config: Any) -> Any:
        """A new client (clients are thread-safe; each gets its own session, as sessions are not)."""
        options: dict[str, Any] = dict(
            # total_max_attempts counts the first try, as dagster-aws's max_attempts does.
            retries={"mode": self.retry_mode, "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=self.max_pool_connections,
        )
        if service == "s3" and self.endpoint_url:
            options["s3"] = {"addressing_style": "path"}  # MinIO, LocalStack, moto
        if service == "s3" and self.use_unsigned_session:
            options["signature_version"] = UNSIGNED
        options.update(config)
        core_session = botocore.session.get_session()
        core_session.register_component("data_loader", _shared_loader())
        session = boto3.session.Session(botocore_session=core_session, profile_name=self.profile_name)
        return session.client(
            service,
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=Config(**options),
        )

    def get_client(self) -> Any:
        return self.client("s3")


def read_secret_string(secrets: Any, secret_id: str, cannot_read: str) -> Optional[str]:
    """A Secrets Manager secret's SecretString (None when it has none), read through dagster-aws's
    SecretsManagerResource (`secrets`; None: the standard chain). A failure is a DeploymentError
    beginning with `cannot_read` (which names the secret) and ending with the error's code or class,
    never a value."""
    from botocore.exceptions import BotoCoreError, ClientError
    from dagster_aws.secretsmanager import SecretsManagerResource

    from ..core.errors import DeploymentError

    try:
        client = (secrets or SecretsManagerResource()).get_client()
        return client.get_secret_value(SecretId=secret_id).get("SecretString")
    except ClientError as error:
        raise DeploymentError(f"{cannot_read} from Secrets Manager: {error_code(error)}") from None
    except BotoCoreError as error:
        raise DeploymentError(f"{cannot_read} from Secrets Manager: {type(error).__name__}") from None
