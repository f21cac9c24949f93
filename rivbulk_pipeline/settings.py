"""Every setting, declared once: its variable, default, check and docs/settings.md line follow from here.

`Settings` is also the Dagster resource the assets and the sensor take, so the launchpad shows
the values in force, and Dagster stores them in every run's job snapshot. A field `x` is read
from `RIVBULK_X`; `Settings.from_env()` validates them all when Dagster loads the code and names
the variable and the rule in every error, never the value (it could be a key set by mistake).
Secrets are not settings: the gateway's API key is read from the environment by the gateway, a
provider's secrets are given by reference (`{"env": ...}` / `{"secret": ...}`), and a setting
that would hold one (a URL with a password, a secret-named provider option with a value) is
refused at load.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Optional
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field, ValidationError, field_validator, model_validator

from .core.rules.user_ids import RIV_USER_ID_PATTERN, check_pattern
from .core.steps.tables import TableLocation, table_location

ENV_PREFIX = "RIVBULK_"
_REGION_FALLBACKS = ("AWS_REGION", "AWS_DEFAULT_REGION")
# A provider option by these names holds a secret: it must be given by reference.
_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api_?key|private_?key|credential|dsn|auth", re.IGNORECASE
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REFERENCE_KINDS = ("env", "secret")  # {"env": "VARIABLE"}, {"secret": "<Secrets Manager ARN or name>"}


class SettingsError(ValueError):
    """One or more RIVBULK_* variables are not valid; the message names each one."""


def _setting(default: Any, description: str, *, may_be_empty: bool = False, **checks: Any) -> Any:
    """A field of `Settings`. An empty variable means the default unless `may_be_empty`."""
    return Field(default=default, description=description, json_schema_extra={"may_be_empty": may_be_empty}, **checks)


class Settings(dg.ConfigurableResource):
    """Where the pipeline reads and writes, and how hard it may push."""

    deployment: Literal["local", "aws"] = _setting(
        "local",
        "`local`: folder store, SQLite history, embedded registry. `aws`: S3, DynamoDB, the RIV gateway over HTTP",
    )
    home: str = _setting(".rivbulk", "local only: where the store, the SQLite files and `dagster_home` live")
    image_bucket: str = _setting(
        "rivbulk-images", "the bucket the images are in (the inventory's source bucket)", min_length=1
    )
    inventory_bucket: str = _setting(
        "rivbulk-inventory", "the inventory's destination bucket (a name, not an ARN)", min_length=1
    )
    inventory_prefix: str = _setting(
        "inventory",
        "the inventory configuration's destination prefix (empty: reports at the bucket's root)",
        may_be_empty=True,
    )
    inventory_config_id: str = _setting("daily", "the inventory configuration id", min_length=1)
    output_bucket: str = _setting(
        "", "where asset tables and Batch manifests are written (empty: the inventory bucket)"
    )
    output_prefix: str = _setting(
        "rivbulk", "prefix for asset tables and Batch manifests (empty: the bucket's root)", may_be_empty=True
    )
    region: Optional[str] = _setting(
        None, "AWS region for S3, DynamoDB and SigV4 (unset: `AWS_REGION`, then `AWS_DEFAULT_REGION`)"
    )
    endpoint_url: Optional[str] = _setting(
        None, "endpoint for S3, DynamoDB and Secrets Manager (MinIO, LocalStack, moto)"
    )
    aws_profile: Optional[str] = _setting(
        None, "AWS profile for every AWS client (unset: the standard credential chain)"
    )
    aws_max_attempts: int = _setting(8, "attempts per AWS call, the first included, >= 1", ge=1, le=50)
    aws_retry_mode: Literal["standard", "adaptive", "legacy"] = _setting(
        "standard", "botocore's retry mode for every AWS client (`standard`, `adaptive` or `legacy`)"
    )
    aws_max_pool_connections: int = _setting(32, "HTTP connections kept per AWS client, >= 1", ge=1, le=1024)
    history_table: str = _setting(
        "rivbulk-import-history", "the DynamoDB import history table", min_length=3, max_length=255
    )
    gateway_url: str = _setting(
        "", "the RIV UserPortal gateway (required for `aws`); rivbulk posts to `<url>/register`"
    )
    gateway_auth: Literal["none", "api_key", "sigv4"] = _setting(
        "none",
        "`none`, `api_key` (the key in `RIVBULK_GATEWAY_API_KEY`, environment only) or `sigv4` (IAM, service"
        " `execute-api`)",
    )
    gateway_api_key_secret: str = _setting(
        "",
        "ARN or name of a Secrets Manager secret holding the API key as plain text (for `api_key`; instead of"
        " `RIVBULK_GATEWAY_API_KEY`)",
    )
    gateway_api_key_header: str = _setting("x-api-key", "the header the API key goes in", min_length=1)
    gateway_timeout_seconds: float = _setting(30.0, "timeout of every gateway call (connect and read), > 0", gt=0)
    gateway_workflow_timeout_seconds: float = _setting(
        30.0,
        "how long RIV's register workflow may run (its Express timeout): after a call whose outcome is unknown,"
        " the load waits this long before asking check-userid, >= 0",
        ge=0,
    )
    gateway_max_payload_bytes: int = _setting(
        262_144,
        "Step Functions' state limit that a request plus DetectFaces' result must fit (256 KiB); a request"
        " that cannot is refused before sending",
        gt=0,
    )
    gateway_image_mode: Literal["inline", "by_reference"] = _setting(
        "inline",
        "`inline`: the image in the request (any RIV version); `by_reference`: RIV reads it from S3 itself"
        " (RIV since 98f4a0d; see *The import history and the gateway*)",
    )
    user_id_pattern: str = _setting(
        RIV_USER_ID_PATTERN,
        "the user ids the registry can index, a regular expression the lower-cased id must match"
        " (RIV: Rekognition's ExternalImageId); invisible characters are never valid",
        min_length=1,
    )
    index_rate: float = _setting(
        5.0,
        "registrations per second across the whole deployment (fractions allowed), > 0; see *One rate for the"
        " deployment*",
        gt=0,
    )
    index_concurrency: int = _setting(
        64,
        "the most registrations in flight at once; the load keeps as many as the rate needs at the gateway's"
        " measured latency (rate x latency), up to this, >= 1",
        ge=1,
        le=512,
    )
    index_max_attempts: int = _setting(
        4, "gateway attempts per object for transient failures (exponential backoff, full jitter), >= 1", ge=1, le=20
    )
    claim_lease_seconds: float = _setting(
        600.0, "how long a run's claim on an object lasts; a killed run's claims are retried after it, > 0", gt=0
    )
    qualify_concurrency: int = _setting(32, "tag reads in flight at once during qualification, >= 1", ge=1, le=1024)
    allowed_property_buckets: str = _setting(
        "", "comma-separated buckets a `Properties` tag may point into (empty: the image bucket); any other is refused"
    )
    max_properties_bytes: int = _setting(65_536, "size bound of a properties.json, > 0", gt=0)
    provider: str = _setting(
        "s3_tags", "the registration provider: `s3_tags`, or `package.module:ClassName` of your own", min_length=1
    )
    provider_options: str = _setting(
        "{}",
        'JSON object of keyword arguments for your provider class; a secret only by reference, `{"env": "VARIABLE"}`'
        ' or `{"secret": "<Secrets Manager ARN or name>"}` (see *Your own registration provider*)',
    )
    inventory_max_age_hours: float = _setting(
        48.0,
        "a warning in the UI when the newest complete inventory report is older than this (S3 Inventory is daily), > 0",
        gt=0,
    )
    alert_permanent_failures: int = _setting(
        100, "a WARN check (and an alert) when one date records more permanent failures than this, >= 0", ge=0
    )
    alert_transient_backlog_hours: float = _setting(
        48.0, "a WARN check (and an alert) when a transient failure has waited longer than this for a run, > 0", gt=0
    )
    alert_sns_topic_arn: str = _setting(
        "",
        "an SNS topic that also receives alerts (failed runs, breached thresholds; counts and codes only). Empty: the"
        " UI only",
    )
    columnar_keys_url_encoded: Literal["auto", "true", "false"] = _setting(
        "auto", "whether keys in ORC/Parquet reports are URL-encoded (`true`/`false`); `auto` decides per report"
    )

    @field_validator("user_id_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        return check_pattern(value)

    @field_validator(
        "deployment", "gateway_auth", "gateway_image_mode", "columnar_keys_url_encoded", "aws_retry_mode", mode="before"
    )
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("provider_options")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON ({error.msg} at character {error.pos})") from None
        if not isinstance(parsed, dict):
            raise ValueError('must be a JSON object of keyword arguments, e.g. {"path": "roster.csv"}')
        for option, item in parsed.items():
            problem = option_problem(option, item)
            if problem:
                raise ValueError(f"option {option!r} {problem}")
        return value

    @field_validator("gateway_url", "endpoint_url")
    @classmethod
    def _no_credentials_in_url(cls, value: Optional[str]) -> Optional[str]:
        if value and url_holds_credentials(value):
            raise ValueError(
                "must not hold credentials (`user:password@`) or a query string: Dagster stores settings in every run;"
                " give a key through RIVBULK_GATEWAY_API_KEY, RIVBULK_GATEWAY_API_KEY_SECRET or the AWS credential"
                " chain"
            )
        return value

    @field_validator("provider")
    @classmethod
    def _provider_path(cls, value: str) -> str:
        module, _, name = value.partition(":")
        if value != "s3_tags" and not (
            module and name.isidentifier() and all(p.isidentifier() for p in module.split("."))
        ):
            raise ValueError("must be `s3_tags` or an import path like `package.module:ClassName`")
        return value

    @model_validator(mode="after")
    def _deployment_needs(self) -> "Settings":
        if self.deployment == "aws" and not self.gateway_url:
            raise ValueError(f"{ENV_PREFIX}GATEWAY_URL must be set for the aws deployment")
        # A claim is renewed as a call leaves once half its lease has gone: half the lease must
        # outlive the call and its settling.
        needed = 2 * (self.gateway_timeout_seconds + self.gateway_workflow_timeout_seconds)
        if self.deployment == "aws" and self.claim_lease_seconds <= needed:
            raise ValueError(
                f"{ENV_PREFIX}CLAIM_LEASE_SECONDS={self.claim_lease_seconds:g} must exceed twice"
                f" {ENV_PREFIX}GATEWAY_TIMEOUT_SECONDS + {ENV_PREFIX}GATEWAY_WORKFLOW_TIMEOUT_SECONDS ({needed:g}):"
                " a claim could lapse while its call is in flight"
            )
        return self

    # ---- derived values (no settings of their own) ----

    @property
    def output_bucket_name(self) -> str:
        return self.output_bucket or self.inventory_bucket

    @property
    def property_buckets(self) -> list[str]:
        named = [bucket.strip() for bucket in self.allowed_property_buckets.split(",") if bucket.strip()]
        return named or [self.image_bucket]

    @property
    def provider_kwargs(self) -> dict[str, Any]:
        return json.loads(self.provider_options)

    @property
    def columnar_keys_flag(self) -> Optional[bool]:
        """None: detect per report."""
        return {"true": True, "false": False}.get(self.columnar_keys_url_encoded)

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    # The local default's layout under `home`, declared here only: every user derives it from these.

    @property
    def local_store_root(self) -> Path:
        """local only: the folder of the local object store (one sub-folder per bucket)."""
        return self.home_path / "store"

    @property
    def local_history_path(self) -> Path:
        """local only: the SQLite import history."""
        return self.home_path / "import_history.sqlite"

    @property
    def local_registry_path(self) -> Path:
        """local only: the embedded registry's SQLite database."""
        return self.home_path / "registry.sqlite"

    @property
    def local_dagster_home(self) -> Path:
        """local only: the Dagster instance `rivbulk dev` uses when DAGSTER_HOME is not set."""
        return self.home_path / "dagster_home"

    @property
    def local_layout(self) -> tuple[Path, ...]:
        """Everything the local default keeps under `home` (what `rivbulk demo --force` deletes)."""
        return (self.local_store_root, self.local_registry_path, self.local_history_path, self.local_dagster_home)

    def table_location(self, asset: str, partition: Optional[str]) -> TableLocation:
        """Where an asset's table is stored in the output bucket (`core.steps.tables.table_location`)."""
        return table_location(self.output_bucket_name, self.output_prefix, asset, partition)

    @property
    def report_root(self) -> str:
        """<dest-prefix>/<source-bucket>/<config-id>, as S3 Inventory delivers."""
        return "/".join(p for p in (self.inventory_prefix.strip("/"), self.image_bucket, self.inventory_config_id) if p)

    # ---- reading the environment ----

    @classmethod
    def variable(cls, name: str) -> str:
        return f"{ENV_PREFIX}{name.upper()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            raw = environ.get(cls.variable(name))
            if raw is None or (raw == "" and not (field.json_schema_extra or {}).get("may_be_empty")):
                continue
            values[name] = raw
        if "region" not in values:
            values["region"] = next((environ[n] for n in _REGION_FALLBACKS if environ.get(n)), None)
        try:
            return cls(**values)
        except ValidationError as error:
            raise SettingsError(_explain(error, values)) from None

    @classmethod
    def markdown_table(cls) -> str:
        """The settings table of docs/settings.md."""
        lines = ["| variable | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            default = field.default
            shown = "none" if default is None else ("empty" if default == "" else f"`{default}`")
            lines.append(f"| `{cls.variable(name)}` | {shown} | {field.description} |")
        return "\n".join(lines)


def _explain(error: ValidationError, values: Mapping[str, Any]) -> str:
    """Each problem by variable and rule. The value is never repeated: a key pasted into the wrong
    variable would otherwise reach logs, `rivbulk load`'s record and its --result-uri object."""
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else ""
        message = item["msg"].removeprefix("Value error, ")
        if name in Settings.model_fields:
            field = Settings.model_fields[name]
            problems.append(f"{Settings.variable(name)} is not valid: {message}. Expected: {field.description}.")
        else:
            problems.append(message)
    return "invalid rivbulk settings:\n  " + "\n  ".join(problems)


def url_holds_credentials(url: str) -> bool:
    """True when a URL carries a user or password, or a query string (where API keys go)."""
    try:
        parts = urlsplit(url)
        return bool(parts.username or parts.password or parts.query)
    except ValueError:  # an unparseable URL is refused by its own user, not here
        return False


def is_reference(item: Any) -> bool:
    """`{"env": "VARIABLE"}` or `{"secret": "<id>"}`: a secret named, not given."""
    return isinstance(item, dict) and len(item) == 1 and next(iter(item)) in REFERENCE_KINDS


def option_problem(option: str, item: Any) -> Optional[str]:
    """Why a provider option may not be stored as given, or None. Never quotes the value."""
    if isinstance(item, dict) and set(item) & set(REFERENCE_KINDS):
        if not is_reference(item):
            return 'mixes a reference with other keys: a reference is exactly {"env": ...} or {"secret": ...}'
        kind, name = next(iter(item.items()))
        if kind == "env" and not (isinstance(name, str) and _ENV_NAME.fullmatch(name)):
            return 'names no valid environment variable: {"env": "VARIABLE"} takes a variable\'s name'
        if kind == "secret" and not (isinstance(name, str) and name.strip()):
            return 'names no secret: {"secret": ...} takes a Secrets Manager ARN or name'
        return None
    if _SECRET_NAME.search(option) and item not in (None, ""):
        return (
            "looks like a secret and holds a value: Dagster stores settings in every run; give it by reference,"
            ' {"env": "VARIABLE"} or {"secret": "<Secrets Manager ARN or name>"}'
        )
    if any(url_holds_credentials(text) and "://" in text for text in _strings(item)):
        return 'holds a URL with credentials or a query string: give the URL by reference, {"env": "VARIABLE"}'
    return None


def _strings(item: Any) -> list[str]:
    if isinstance(item, str):
        return [item]
    if isinstance(item, dict):
        return [text for value in item.values() for text in _strings(value)]
    if isinstance(item, list):
        return [text for value in item for text in _strings(value)]
    return []
