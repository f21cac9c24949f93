"""The gateway interface, and the input checks both gateways apply before doing anything."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Optional

import dagster as dg
from pydantic import Field

from ...core.errors import ImageRejected
from ...core.model import GatewayResult, ObjectRef
from ...core.rules.images import ImageInfo, check_image
from ...core.rules.properties import is_unicode_text
from ...core.rules.user_ids import RIV_USER_ID_PATTERN, user_id_problem

_AUTH_MODES = ("none", "api_key", "sigv4")
_SETUP_LOCK = threading.Lock()  # lazy client creation from many threads


def _no_pace() -> None:
    return None


class GatewayResource(dg.ConfigurableResource):
    """Base of the gateways, so the Dagster wiring can annotate with it and bind either."""

    user_id_pattern: str = Field(default=RIV_USER_ID_PATTERN, description="The ids the registry can index (a regex)")

    @property
    def needs_image_bytes(self) -> bool:
        """False when the registry reads the image itself (RIV by reference)."""
        return True

    def register(
        self,
        user_id: str,
        image: Optional[bytes],
        properties: Mapping[str, str],
        pace: Callable[[], object] = _no_pace,
        *,
        source: Optional[ObjectRef] = None,
    ) -> GatewayResult:
        """See core.ports.Gateway; `pace()` is called right before the call goes out."""
        raise NotImplementedError

    def user_exists(self, user_id: str) -> Optional[bool]:
        """See core.ports.Gateway: whether the registry holds this user; None when it cannot tell."""
        return None


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
        raise _Rejected(f"bad_properties: properties must be a Mapping[str, str], not {type(properties).__name__}")
    for key, value in properties.items():
        if not isinstance(key, str):
            raise _Rejected(f"bad_properties: properties must be a Mapping[str, str]; a key is {type(key).__name__}")
        if not isinstance(value, str):
            raise _Rejected(
                f"bad_properties: properties must be a Mapping[str, str]; a value is {type(value).__name__}"
            )
        if not (is_unicode_text(key) and is_unicode_text(value)):
            raise _Rejected("bad_properties: a property key or value is not valid Unicode text (lone surrogate)")
    return dict(properties)


def _checked_input(
    user_id: str, image: Optional[bytes], properties: Optional[Mapping[str, str]], pattern: str = RIV_USER_ID_PATTERN
) -> tuple[Optional[ImageInfo], dict[str, str]]:
    """The checks before any call; `image=None` (by reference): the registry checks the image itself."""
    why = user_id_problem(user_id, pattern)
    if why:
        raise _Rejected(f"bad_user_id: {why}")
    props = _checked_properties(properties)
    if image is None:
        return None, props
    try:
        info = check_image(image, f"the image for user {user_id}")
    except ImageRejected as exc:
        raise _Rejected(f"{exc.reason_code}: {exc.detail}") from None
    return info, props
