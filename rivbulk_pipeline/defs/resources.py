"""Resources per deployment: `local` (embedded, the default) or `aws` (production)."""
from __future__ import annotations

from typing import Any

import dagster as dg

from dagster_aws.secretsmanager import SecretsManagerResource

from ..resources.aws import AwsClients
from ..resources.gateway import LocalRegistryGateway, RivHttpGateway
from ..resources.history import DynamoImportHistory, SqliteImportHistory
from ..resources.object_store import LocalObjectStore, S3ObjectStore
from ..resources.registration import CustomRegistrationProvider, S3TagRegistrationProvider
from ..settings import Settings
from .io_manager import StoredTableIOManager


def aws_clients(settings: Settings) -> AwsClients:
    """The one boto3 configuration (dagster-aws's S3Resource fields) every AWS adapter shares."""
    return AwsClients(
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        profile_name=settings.aws_profile,
        max_attempts=settings.aws_max_attempts,
        retry_mode=settings.aws_retry_mode,
        max_pool_connections=settings.aws_max_pool_connections,
    )


def build_resources(settings: Settings) -> dict[str, Any]:
    if settings.deployment == "local":
        home = settings.home_path
        store = LocalObjectStore(root=str(settings.local_store_root))
        history = SqliteImportHistory(db_path=str(home / "import_history.sqlite"))
        gateway = LocalRegistryGateway(db_path=str(home / "registry.sqlite"), user_id_pattern=settings.user_id_pattern)
    elif settings.deployment == "aws":
        aws = aws_clients(settings)
        store = S3ObjectStore(aws=aws)
        history = DynamoImportHistory(table_name=settings.history_table, aws=aws)
        from_secret = settings.gateway_auth == "api_key" and bool(settings.gateway_api_key_secret)
        gateway = RivHttpGateway(
            url=settings.gateway_url,
            auth=settings.gateway_auth,
            # The key stays in the environment or Secrets Manager: Dagster stores the variable's
            # name or the secret's id, never the key.
            api_key=dg.EnvVar("RIVBULK_GATEWAY_API_KEY") if settings.gateway_auth == "api_key" and not from_secret else None,
            api_key_secret_id=settings.gateway_api_key_secret if from_secret else None,
            secrets_manager=SecretsManagerResource(
                region_name=settings.region, endpoint_url=settings.endpoint_url, profile_name=settings.aws_profile,
                max_attempts=settings.aws_max_attempts,
            ) if from_secret else None,
            api_key_header=settings.gateway_api_key_header,
            region_name=settings.region,
            profile_name=settings.aws_profile,
            timeout_seconds=settings.gateway_timeout_seconds,
            max_payload_bytes=settings.gateway_max_payload_bytes,
            image_mode=settings.gateway_image_mode,
            pool_size=settings.index_concurrency,  # one connection per call in flight
            user_id_pattern=settings.user_id_pattern,
        )

    if settings.provider == "s3_tags":
        registration = S3TagRegistrationProvider(
            store=store,
            allowed_property_buckets=settings.property_buckets,
            max_properties_bytes=settings.max_properties_bytes,
        )
    else:
        # Options hold secrets only by reference (checked at load): that is all Dagster stores.
        options = settings.provider_kwargs
        names_a_secret = any(isinstance(item, dict) and set(item) == {"secret"} for item in options.values())
        registration = CustomRegistrationProvider(
            class_path=settings.provider,
            options=options,
            store=store,
            secrets_manager=SecretsManagerResource(
                region_name=settings.region, endpoint_url=settings.endpoint_url, profile_name=settings.aws_profile,
                max_attempts=settings.aws_max_attempts,
            ) if names_a_secret else None,
        )
    return {
        "settings": settings,
        "store": store,
        "history": history,
        "gateway": gateway,
        "registration": registration,
        # Every stored table as a pandas DataFrame (load_asset_value, downstream inputs).
        "io_manager": StoredTableIOManager(settings=settings, store=store),
        "correction_counts": dg.mem_io_manager,  # correct_history_job's counts (shown as metadata)
    }
