"""Object store adapters: S3 through boto3, and a local folder with S3's semantics.

Both satisfy `core.ports.ObjectStore`. The Dagster wiring annotates a parameter with
`ObjectStoreResource` and binds either one.
"""
from .base import ObjectStoreResource
from .local import LocalObjectStore
from .s3 import S3ObjectStore

__all__ = ["ObjectStoreResource", "LocalObjectStore", "S3ObjectStore"]
