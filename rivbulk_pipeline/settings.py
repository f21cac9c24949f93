"""Every setting, read from the environment once (documented in the README's table)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional


def _flag(value: str) -> Optional[bool]:
    """'true'/'false' force a reading, anything else (e.g. 'auto') leaves it to detection."""
    lowered = value.strip().lower()
    return {"true": True, "false": False}.get(lowered)


@dataclass(frozen=True)
class Settings:
    deployment: str = "local"  # local | aws
    home: str = ".rivbulk"  # local default: store, SQLite files, DAGSTER_HOME
    image_bucket: str = "rivbulk-images"
    inventory_bucket: str = "rivbulk-inventory"
    inventory_prefix: str = "inventory"
    inventory_config_id: str = "daily"
    output_bucket: str = ""  # where asset tables and Batch manifests go; default: the inventory bucket
    output_prefix: str = "rivbulk"
    region_name: Optional[str] = None
    endpoint_url: Optional[str] = None
    history_table: str = "rivbulk-import-history"
    gateway_url: str = ""
    gateway_auth: str = "none"  # none | api_key | sigv4
    gateway_api_key_header: str = "x-api-key"
    gateway_timeout_seconds: float = 30.0
    gateway_max_payload_bytes: int = 262_144
    index_rate_per_second: float = 5.0
    index_concurrency: int = 8
    index_max_attempts: int = 4
    claim_lease_seconds: float = 600.0
    qualify_concurrency: int = 32
    allowed_property_buckets: tuple[str, ...] = ()  # default: the image bucket
    max_properties_bytes: int = 64 * 1024
    provider: str = "s3_tags"  # s3_tags | package.module:ClassName
    provider_options: Mapping[str, str] = field(default_factory=dict)
    columnar_keys_url_encoded: Optional[bool] = None  # None: detect per report

    @property
    def output_bucket_name(self) -> str:
        return self.output_bucket or self.inventory_bucket

    @property
    def property_buckets(self) -> list[str]:
        return list(self.allowed_property_buckets) or [self.image_bucket]

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        def get(name: str, default):
            return environ.get(f"RIVBULK_{name}", "") or default

        defaults = cls()
        return cls(
            deployment=get("DEPLOYMENT", defaults.deployment).lower(),
            home=get("HOME", defaults.home),
            image_bucket=get("IMAGE_BUCKET", defaults.image_bucket),
            inventory_bucket=get("INVENTORY_BUCKET", defaults.inventory_bucket),
            inventory_prefix=get("INVENTORY_PREFIX", defaults.inventory_prefix),
            inventory_config_id=get("INVENTORY_CONFIG_ID", defaults.inventory_config_id),
            output_bucket=get("OUTPUT_BUCKET", defaults.output_bucket),
            output_prefix=get("OUTPUT_PREFIX", defaults.output_prefix),
            region_name=get("REGION", None) or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION"),
            endpoint_url=get("ENDPOINT_URL", None),
            history_table=get("HISTORY_TABLE", defaults.history_table),
            gateway_url=get("GATEWAY_URL", defaults.gateway_url),
            gateway_auth=get("GATEWAY_AUTH", defaults.gateway_auth).lower(),
            gateway_api_key_header=get("GATEWAY_API_KEY_HEADER", defaults.gateway_api_key_header),
            gateway_timeout_seconds=float(get("GATEWAY_TIMEOUT_SECONDS", defaults.gateway_timeout_seconds)),
            gateway_max_payload_bytes=int(get("GATEWAY_MAX_PAYLOAD_BYTES", defaults.gateway_max_payload_bytes)),
            index_rate_per_second=float(get("INDEX_RATE", defaults.index_rate_per_second)),
            index_concurrency=int(get("INDEX_CONCURRENCY", defaults.index_concurrency)),
            index_max_attempts=int(get("INDEX_MAX_ATTEMPTS", defaults.index_max_attempts)),
            claim_lease_seconds=float(get("CLAIM_LEASE_SECONDS", defaults.claim_lease_seconds)),
            qualify_concurrency=int(get("QUALIFY_CONCURRENCY", defaults.qualify_concurrency)),
            allowed_property_buckets=tuple(
                b.strip() for b in get("ALLOWED_PROPERTY_BUCKETS", "").split(",") if b.strip()
            ),
            max_properties_bytes=int(get("MAX_PROPERTIES_BYTES", defaults.max_properties_bytes)),
            provider=get("PROVIDER", defaults.provider),
            provider_options=json.loads(get("PROVIDER_OPTIONS", "{}")),
            columnar_keys_url_encoded=_flag(get("COLUMNAR_KEYS_URL_ENCODED", "auto")),
        )
