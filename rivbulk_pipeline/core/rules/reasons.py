"""Reasons as recorded in the tables and the history: short, stable, lower-case tokens.

A registration provider may give its own (`not_in_roster`); anything that is not such a token
(a sentence, a value that could carry personal data) is recorded as `provider_error` instead.

A recorded reason is `<code>: <free text>`. The UI (metadata keys, counts, warnings, failed rows)
shows only the code, and only from a bounded set (`shown_code`): free text from the gateway or a
provider, which may name a user, stays in the stored tables and the history.
"""

from __future__ import annotations

import re

from ..model import Reason
from .gateway_errors import KNOWN_ERRORS, UNKNOWN_ERROR_CODE

_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,63}")


def is_reason_token(reason: object) -> bool:
    return isinstance(reason, str) and _TOKEN.fullmatch(reason) is not None


def reason_token(reason: object) -> str:
    """`reason` itself when it is a token (a `Reason` or a provider's own), else `provider_error`."""
    value = reason.value if isinstance(reason, Reason) else reason
    return value if is_reason_token(value) else Reason.PROVIDER_ERROR.value


def shown_code(code: str) -> str:
    """A reason's code as the UI may show it: a token (our `Reason` values, image and indexing
    codes such as `http_503`, a provider's own) or an error name RIV gives (which the embedded
    registry gives too); anything else, such as a sentence without a colon, is `gateway_error`."""
    if is_reason_token(code) or code in KNOWN_ERRORS:
        return code
    return UNKNOWN_ERROR_CODE
