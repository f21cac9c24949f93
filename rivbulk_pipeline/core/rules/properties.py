"""The user's property bag: where it may be read from and what it must look like.

Errors name the object and the rule, never the property values (personal data).
"""

from __future__ import annotations

import json
from typing import Iterable

from ..errors import RegistrationRejected
from ..model import Reason

DEFAULT_MAX_PROPERTIES_BYTES = 64 * 1024


def parse_properties_uri(uri: str, allowed_buckets: Iterable[str], location: str) -> tuple[str, str]:
    """Split `s3://bucket/path/file.json` into (bucket, key), refusing any other bucket or shape."""
    prefix = "s3://"
    if not uri.startswith(prefix) or "/" not in uri[len(prefix) :]:
        raise RegistrationRejected(
            Reason.PROPERTIES_NOT_ALLOWED, f"{location}: Properties tag must be an s3://bucket/path/file.json path"
        )
    bucket, key = uri[len(prefix) :].split("/", 1)
    if not key.lower().endswith(".json"):
        raise RegistrationRejected(Reason.PROPERTIES_NOT_ALLOWED, f"{location}: Properties path must end in .json")
    allowed = sorted(set(allowed_buckets))
    if bucket not in allowed:
        raise RegistrationRejected(
            Reason.PROPERTIES_NOT_ALLOWED,
            f"{location}: Properties bucket {bucket!r} is not an allowed properties bucket ({', '.join(allowed)})",
        )
    return bucket, key


def parse_properties(raw: bytes, location: str, max_bytes: int = DEFAULT_MAX_PROPERTIES_BYTES) -> dict[str, str]:
    """Decode properties.json into a Mapping[str, str], or raise RegistrationRejected(BAD_PROPERTIES)."""
    if len(raw) > max_bytes:
        raise RegistrationRejected(
            Reason.BAD_PROPERTIES, f"{location}: properties file is {len(raw)} bytes, over the {max_bytes}-byte bound"
        )
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistrationRejected(
            Reason.BAD_PROPERTIES,
            f"{location}: properties file is not UTF-8 JSON ({type(exc).__name__} at byte"
            f" {getattr(exc, 'pos', getattr(exc, 'start', '?'))})",
        ) from None
    if not isinstance(value, dict):
        raise RegistrationRejected(
            Reason.BAD_PROPERTIES,
            f"{location}: properties must be a JSON object of string to string, got a JSON {_json_type(value)}",
        )
    for position, (name, item) in enumerate(value.items(), start=1):
        if not isinstance(item, str):
            raise RegistrationRejected(
                Reason.BAD_PROPERTIES,
                f"{location}: properties must map strings to strings; value #{position} is a JSON {_json_type(item)}",
            )
        for part, text in (("key", name), ("value", item)):
            if not is_unicode_text(text):
                raise RegistrationRejected(
                    Reason.BAD_PROPERTIES,
                    f"{location}: properties {part} #{position} is not valid Unicode text (a lone surrogate escape"
                    " such as \\ud83d): the gateway takes UTF-8 only",
                )
    return value


def is_unicode_text(text: str) -> bool:
    """True when `text` encodes to UTF-8: JSON's `\\uXXXX` escapes can smuggle in lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )
