"""core.rules.user_ids: the ids RIV can index (Rekognition's ExternalImageId), checked before any call."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rivbulk_pipeline.core.rules.user_ids import RIV_USER_ID_PATTERN, check_pattern, registry_user_id, user_id_problem


def test_ids_rekognition_takes_pass() -> None:
    for user_id in ("alice", "Alice", "user-1.a:b_C", "dave.smith", "x" * 128, "0"):
        assert user_id_problem(user_id) is None, user_id


@pytest.mark.parametrize("user_id", ["bob@example.com", "José", "李小龍", "dave smith", "eve+frank", "o'brien", "a/b"])
def test_ids_that_would_fail_at_index_faces_are_refused_naming_the_rule(user_id: str) -> None:
    problem = user_id_problem(user_id)
    assert problem is not None and RIV_USER_ID_PATTERN in problem
    assert user_id not in problem  # the id itself is personal data: never echoed


def test_length_emptiness_and_type() -> None:
    assert "129 characters" in (user_id_problem("x" * 129) or "")
    assert "empty" in (user_id_problem("") or "")
    assert "empty" in (user_id_problem("   ") or "")
    assert "string" in (user_id_problem(42) or "")


@pytest.mark.parametrize(
    "char",
    ["\u200b", "\u200d", "\u202e", "\u2066", "\ufeff", "\u2028", "\u2029", "\x00", "\n", "\x85", "\udc80", "\ue000"],
)
def test_invisible_and_direction_changing_characters_are_never_valid_whatever_the_rule(char: str) -> None:
    problem = user_id_problem(f"al{char}ice", pattern=r".+")  # a registry that takes anything
    assert problem is not None and f"U+{ord(char):04X}" in problem


def test_another_registry_may_take_other_ids() -> None:
    assert user_id_problem("bob@example.com", pattern=r"[a-z0-9@.]+") is None
    assert user_id_problem("李小龍", pattern=r"\w+") is None


def test_ids_differing_only_in_case_are_one_user() -> None:
    assert registry_user_id("Alice") == registry_user_id("ALICE") == "alice"


def test_a_pattern_that_does_not_compile_is_refused() -> None:
    assert check_pattern(r"[a-z]+") == r"[a-z]+"
    with pytest.raises(ValueError, match="not a regular expression"):
        check_pattern("[a-z")


@given(st.text(min_size=1, max_size=140))
def test_every_id_that_passes_is_a_valid_external_image_id(user_id: str) -> None:
    import re

    if user_id_problem(user_id) is None:
        external = registry_user_id(user_id)
        assert re.fullmatch(r"[a-zA-Z0-9_.\-:]+", external) and len(external) <= 255
