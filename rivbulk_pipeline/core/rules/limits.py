"""DynamoDB's item size rule, shared by the import history and the registry's user record."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Mapping

DYNAMODB_ITEM_LIMIT = 400_000  # "400 KB", attribute names included; the decimal reading is safe under both
_NUMBER_BYTES = 21  # a DynamoDB number takes at most 21 bytes (38 digits): count the worst case


def dynamodb_item_size(item: Mapping[str, Any]) -> int:
    """An upper bound of an item's size by DynamoDB's rules: UTF-8 names and values, numbers at
    their worst case, booleans 1 byte, maps 3 bytes + 1 per element plus their contents."""
    total = 0
    for name, value in item.items():
        total += len(name.encode("utf-8"))
        if value is None:
            continue
        if isinstance(value, str):
            total += len(value.encode("utf-8"))
        elif isinstance(value, bool):
            total += 1
        elif isinstance(value, (int, float, Decimal)):
            total += _NUMBER_BYTES
        elif isinstance(value, Mapping):
            total += 3 + len(value) + dynamodb_item_size(value)
        else:
            raise TypeError(f"attribute {name!r}: unsupported type {type(value).__name__}")
    return total
