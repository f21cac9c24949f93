"""Gateways: register one user with one face image (`core.ports.Gateway`).

- `LocalRegistryGateway`: the embedded registry, a real SQLite database with the RIV rules.
- `RivHttpGateway`: the RIV UserPortal gateway over HTTP (`POST <url>/register`).

Both make ONE attempt per call and never raise for a per-user failure: the caller does the
retries, the backoff and the rate limiting. Neither logs nor echoes images, properties or keys.
"""

from ...core.rules.limits import DYNAMODB_ITEM_LIMIT, dynamodb_item_size
from .base import GatewayResource
from .local_registry import LocalRegistryGateway
from .riv_http import RivHttpGateway

__all__ = [
    "DYNAMODB_ITEM_LIMIT",
    "GatewayResource",
    "LocalRegistryGateway",
    "RivHttpGateway",
    "dynamodb_item_size",
]
