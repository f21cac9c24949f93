"""Object store adapters: S3 through boto3, and a local folder with S3's semantics.

Both satisfy `core.ports.ObjectStore`. The Dagster wiring annotates a parameter with
`ObjectStoreResource` and binds either one.
"""

from .base import ObjectStoreResource
from .local import LocalObjectStore

__all__ = ["ObjectStoreResource", "LocalObjectStore", "S3ObjectStore"]


def __getattr__(name: str):
    # Imported on first use: boto3 and dagster-aws cost a second of start-up that
    # `rivbulk inventory` on the local store does not need.
    if name == "S3ObjectStore":
        from .s3 import S3ObjectStore

        return S3ObjectStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
