"""S3 object tag rules: the limits, the read-merge-write merge, and the marker reading.

S3 tag keys are case-sensitive, but the seed's tags are written by people (`UserId`,
`userid`, `USERID`), so the pipeline looks them up case-insensitively and a merge replaces
a key that differs only by case instead of adding a near-duplicate beside it.
"""

from __future__ import annotations

from typing import Mapping, Optional

from ..errors import TagLimitError

MAX_TAGS = 10
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 256


def _split_location(location: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key), so the error keeps StoreError's fields."""
    rest = location[len("s3://") :] if location.startswith("s3://") else location
    bucket, _, key = rest.partition("/")
    return bucket, key


def validate_tag_set(tags: Mapping[str, str], location: str) -> None:
    """Raise TagLimitError when `tags` breaks S3's tag rules.

    `location` names the object (`s3://bucket/key`, as `str(ObjectRef)` gives it). The
    message names the rule and the offending tag key's length, never a tag value.
    """
    bucket, key = _split_location(location)

    def fail(rule: str) -> TagLimitError:
        return TagLimitError(bucket, key, rule)

    if len(tags) > MAX_TAGS:
        raise fail(f"{len(tags)} tags, S3 allows at most {MAX_TAGS} per object")
    # Keys are unique by construction of a Mapping (S3 compares them case-sensitively too).
    for tag_key, value in tags.items():
        if not isinstance(tag_key, str) or not isinstance(value, str):
            raise fail("tag keys and values must be strings")
        if not 1 <= len(tag_key) <= MAX_KEY_CHARS:
            raise fail(f"a tag key of {len(tag_key)} characters; keys must be 1..{MAX_KEY_CHARS} characters")
        if len(value) > MAX_VALUE_CHARS:
            raise fail(
                f"the value of tag {tag_key!r} has {len(value)} characters; values must be at most {MAX_VALUE_CHARS}"
            )


def merge_tag_sets(existing: Mapping[str, str], updates: Mapping[str, str]) -> dict[str, str]:
    """The tag set to write back: every existing tag kept, except those whose key equals
    an update's key case-insensitively, which the update replaces (with its spelling)."""
    replaced = {k.casefold() for k in updates}
    merged = {k: v for k, v in existing.items() if k.casefold() not in replaced}
    merged.update(updates)
    return merged


def tag_lookup(tags: Mapping[str, str], name: str) -> Optional[str]:
    """The value of tag `name`, key compared case-insensitively; None when absent.

    An exact-case match wins; among several case variants the smallest key is taken, so
    the answer never depends on the order the store returned the tags in.
    """
    if name in tags:
        return tags[name]
    wanted = name.casefold()
    matches = sorted(k for k in tags if k.casefold() == wanted)
    return tags[matches[0]] if matches else None


def is_true_marker(value: Optional[str]) -> bool:
    """A marker tag (`Indexed`, `Ignore`) counts only when its value reads `true`."""
    return value is not None and value.strip().lower() == "true"
