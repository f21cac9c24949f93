"""The gateway interface, and the input checks both gateways apply before doing anything."""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Optional

import dagster as dg

from ...core.errors import ImageRejected
from ...core.model import GatewayResult
from ...core.rules.images import ImageInfo, check_image, validate_user_id
from ...core.rules.properties import is_unicode_text


STEP_FUNCTIONS_PAYLOAD_LIMIT = 262_144  # RIV runs register in a synchronous Express workflow
_AUTH_MODES = ("none", "api_key", "sigv4")
_SETUP_LOCK = threading.Lock()  # lazy client creation from many threads


def _no_pace() -> None:
    return None


class GatewayResource(dg.ConfigurableResource):
    """Base of the gateways, so the Dagster wiring can annotate with it and bind either."""

    def register(
        self, user_id: str, image: bytes, properties: Mapping[str, str], pace: Callable[[], object] = _no_pace
    ) -> GatewayResult:
        """See core.ports.Gateway; `pace()` is called right before the call goes out."""
        raise NotImplementedError


# ---- checks both gateways apply before doing anything ----


class _Rejected(Exception):
    """A permanent per-user failure found locally; `reason` goes into the GatewayResult."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _checked_properties(properties: Optional[Mapping[str, str]]) -> dict[str, str]:
    # The contract (and the RIV record) is Mapping[str, str]. Name the type, never a key or value.
    if properties is None:
        return {}
    if not isinstance(properties, Mapping):
        raise _Rejected(f"InvalidProperties: properties must be a Mapping[str, str], not {type(properties).__name__}")
    for key, value in properties.items():
        if not isinstance(key, str):
            raise _Rejected(f"InvalidProperties: properties must be a Mapping[str, str]; a key is {type(key).__name__}")
        if not isinstance(value, str):
            raise _Rejected(
                f"InvalidProperties: properties must be a Mapping[str, str]; a value is {type(value).__name__}"
            )
        if not (is_unicode_text(key) and is_unicode_text(value)):
            raise _Rejected("InvalidProperties: a property key or value is not valid Unicode text (lone surrogate)")
    return dict(properties)


def _checked_input(
    user_id: str, image: bytes, properties: Optional[Mapping[str, str]]
) -> tuple[ImageInfo, dict[str, str]]:
    why = validate_user_id(user_id)
    if why:
        raise _Rejected(f"InvalidUserId: {why}")
    props = _checked_properties(properties)
    try:
        info = check_image(image, f"the image for user {user_id}")
    except ImageRejected as exc:
        raise _Rejected(f"{exc.reason_code}: {exc.detail}") from None
    return info, props
