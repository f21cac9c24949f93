"""Reasons as recorded in the tables and the history: short, stable, lower-case tokens.

A registration provider may give its own (`not_in_roster`); anything that is not such a token
(a sentence, a value that could carry personal data) is recorded as `provider_error` instead.
"""
from __future__ import annotations

import re

from ..model import Reason

_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,63}")


def is_reason_token(reason: object) -> bool:
    return isinstance(reason, str) and _TOKEN.fullmatch(reason) is not None


def reason_token(reason: object) -> str:
    """`reason` itself when it is a token (a `Reason` or a provider's own), else `provider_error`."""
    value = reason.value if isinstance(reason, Reason) else reason
    return value if is_reason_token(value) else Reason.PROVIDER_ERROR.value
