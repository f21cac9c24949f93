"""Resources per deployment: `local` (embedded, the default) or `aws` (production)."""
from __future__ import annotations

from typing import Any

import dagster as dg

from ..resources.gateway import LocalRegistryGateway, RivHttpGateway
from ..resources.history import DynamoImportHistory, SqliteImportHistory
from ..resources.object_store import LocalObjectStore, S3ObjectStore
from ..resources.registration import CustomRegistrationProvider, S3TagRegistrationProvider
from ..settings import Settings
from .io_manager import StoredTableIOManager


def build_resources(settings: Settings) -> dict[str, Any]:
    if settings.deployment == "local":
        home = settings.home_path
        store = LocalObjectStore(root=str(home / "store"))
        history = SqliteImportHistory(db_path=str(home / "import_history.sqlite"))
        gateway = LocalRegistryGateway(db_path=str(home / "registry.sqlite"))
    elif settings.deployment == "aws":
        store = S3ObjectStore(region_name=settings.region, endpoint_url=settings.endpoint_url)
        history = DynamoImportHistory(
            table_name=settings.history_table, region_name=settings.region, endpoint_url=settings.endpoint_url
        )
        gateway = RivHttpGateway(
            url=settings.gateway_url,
            auth=settings.gateway_auth,
            # The key stays in the environment: Dagster stores the variable's name, not its value.
            api_key=dg.EnvVar("RIVBULK_GATEWAY_API_KEY") if settings.gateway_auth == "api_key" else None,
            api_key_header=settings.gateway_api_key_header,
            region_name=settings.region,
            timeout_seconds=settings.gateway_timeout_seconds,
            max_payload_bytes=settings.gateway_max_payload_bytes,
        )

    if settings.provider == "s3_tags":
        registration = S3TagRegistrationProvider(
            store=store,
            allowed_property_buckets=settings.property_buckets,
            max_properties_bytes=settings.max_properties_bytes,
        )
    else:
        registration = CustomRegistrationProvider(
            class_path=settings.provider, options=settings.provider_kwargs, store=store
        )
    return {
        "settings": settings,
        "store": store,
        "history": history,
        "gateway": gateway,
        "registration": registration,
        # Every stored table as a pandas DataFrame (load_asset_value, downstream inputs).
        "io_manager": StoredTableIOManager(settings=settings, store=store),
    }
