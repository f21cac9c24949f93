"""Resources per deployment: `local` (embedded, the default) or `aws` (production).

The one place the code location and the `rivbulk` command get their store, history, gateway and
provider from. The adapters are imported when first built: `rivbulk inventory` on the local store
needs neither boto3 nor the gateways (a second of start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg

from ..settings import Settings
from .object_store import LocalObjectStore, ObjectStoreResource

if TYPE_CHECKING:
    from dagster_aws.secretsmanager import SecretsManagerResource

    from .aws import AwsClients


def _aws_fields(settings: Settings) -> dict[str, Any]:
    """The AWS settings every dagster-aws-shaped resource takes."""
    return {
        "region_name": settings.region,
        "endpoint_url": settings.endpoint_url,
        "profile_name": settings.aws_profile,
        "max_attempts": settings.aws_max_attempts,
    }


def aws_clients(settings: Settings) -> "AwsClients":
    """The one boto3 configuration (dagster-aws's S3Resource fields) every AWS adapter shares."""
    from .aws import AwsClients

    return AwsClients(
        **_aws_fields(settings),
        retry_mode=settings.aws_retry_mode,
        max_pool_connections=settings.aws_max_pool_connections,
    )


def secrets_manager(settings: Settings) -> "SecretsManagerResource":
    """dagster-aws's Secrets Manager resource with the deployment's AWS settings."""
    from dagster_aws.secretsmanager import SecretsManagerResource

    return SecretsManagerResource(**_aws_fields(settings))


def store_for(settings: Settings) -> ObjectStoreResource:
    """The deployment's object store: the local folder, or S3."""
    if settings.deployment == "local":
        return LocalObjectStore(root=str(settings.local_store_root))
    from .object_store import S3ObjectStore

    return S3ObjectStore(aws=aws_clients(settings))


def build_resources(settings: Settings) -> dict[str, Any]:
    """Every resource the definitions bind, for the deployment the settings name."""
    from .gateway import LocalRegistryGateway, RivHttpGateway
    from .history import DynamoImportHistory, SqliteImportHistory
    from .io_manager import StoredTableIOManager
    from .registration import CustomRegistrationProvider, S3TagRegistrationProvider

    store = store_for(settings)
    if settings.deployment == "local":
        history = SqliteImportHistory(db_path=str(settings.local_history_path))
        gateway = LocalRegistryGateway(
            db_path=str(settings.local_registry_path), user_id_pattern=settings.user_id_pattern
        )
    elif settings.deployment == "aws":
        # The store's AWS configuration: one for every AWS adapter.
        history = DynamoImportHistory(table_name=settings.history_table, aws=store.aws)
        from_secret = settings.gateway_auth == "api_key" and bool(settings.gateway_api_key_secret)
        gateway = RivHttpGateway(
            url=settings.gateway_url,
            auth=settings.gateway_auth,
            # The key stays in the environment or Secrets Manager: Dagster stores the variable's
            # name or the secret's id, never the key.
            api_key=dg.EnvVar("RIVBULK_GATEWAY_API_KEY")
            if settings.gateway_auth == "api_key" and not from_secret
            else None,
            api_key_secret_id=settings.gateway_api_key_secret if from_secret else None,
            secrets_manager=secrets_manager(settings) if from_secret else None,
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
            secrets_manager=secrets_manager(settings) if names_a_secret else None,
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
