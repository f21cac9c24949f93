"""User ids the registry can index, checked before any call.

RIV lower-cases the id and passes it to Rekognition as ExternalImageId, which allows only
`[a-zA-Z0-9_.\\-:]+`, at most 255 characters; anything else fails at IndexFaces after two paid
calls. So the id is checked here against that rule (another registry's rule may be a setting),
sent lower-cased, and ids that differ only in case are one user (RIV keys `User::<lower-cased id>`).
Invisible and direction-changing characters are never valid, whatever the rule: an id that
reads the same as another but is not would be a second user nobody can tell apart.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

RIV_USER_ID_PATTERN = r"[a-zA-Z0-9_.\-:]+"  # Rekognition's ExternalImageId
MAX_USER_ID_CHARS = 128  # the seed's UserId limit (ExternalImageId itself allows 255)

# Not printable text: controls, format characters (zero-width, bidi embeddings, overrides and
# isolates, the BOM), line and paragraph separators, surrogates, unassigned and private use.
_NEVER_VALID_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


@lru_cache(maxsize=8)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def registry_user_id(user_id: str) -> str:
    """The id as the registry stores it: lower-cased, as RIV does."""
    return user_id.lower()


def user_id_problem(user_id: object, pattern: str = RIV_USER_ID_PATTERN) -> str | None:
    """None when the registry can index `user_id`, else the rule it breaks (never echoing the id)."""
    if not isinstance(user_id, str):
        return f"user id must be a string, not {type(user_id).__name__}"
    if not user_id.strip():
        return "user id is empty"
    if len(user_id) > MAX_USER_ID_CHARS:
        return f"user id is {len(user_id)} characters, over the {MAX_USER_ID_CHARS}-character limit"
    for position, char in enumerate(user_id, start=1):
        category = unicodedata.category(char)
        if category in _NEVER_VALID_CATEGORIES:
            name = unicodedata.name(char, "unnamed")
            return f"user id holds an invisible or control character U+{ord(char):04X} ({name}) at position {position}"
    if not _compiled(pattern).fullmatch(registry_user_id(user_id)):
        bad = next((c for c in registry_user_id(user_id) if not _compiled(pattern).fullmatch(c)), None)
        which = f" (U+{ord(bad):04X} at position {user_id.lower().index(bad) + 1})" if bad else ""
        return f"user id has a character the registry cannot index{which}: ids must match {pattern}"
    return None


def check_pattern(pattern: str) -> str:
    """`pattern` itself when it compiles; ValueError naming the regex error otherwise."""
    try:
        _compiled(pattern)
    except re.error as error:
        raise ValueError(f"not a regular expression ({error})") from None
    return pattern
