"""The tag rules: S3's limits, the case-insensitive merge and lookup, the marker reading."""

from __future__ import annotations

import pytest

from rivbulk_pipeline.core.errors import StoreError, TagLimitError
from rivbulk_pipeline.core.rules.tags import is_true_marker, merge_tag_sets, tag_lookup, validate_tag_set

WHERE = "s3://images/users/alice.jpg"


def test_a_full_tag_set_at_every_limit_is_valid() -> None:
    tags = {f"k{i}": "v" for i in range(9)}
    tags["K" * 128] = "v" * 256
    validate_tag_set(tags, WHERE)  # 10 tags, longest key, longest value: no error
    validate_tag_set({}, WHERE)


def test_eleven_tags_break_the_ten_tag_rule_and_the_error_names_the_object() -> None:
    with pytest.raises(TagLimitError) as caught:
        validate_tag_set({f"k{i}": "v" for i in range(11)}, WHERE)
    error = caught.value
    assert isinstance(error, StoreError)
    assert (error.bucket, error.key) == ("images", "users/alice.jpg")
    assert str(error).startswith(WHERE + ": ")
    assert "11 tags" in str(error) and "at most 10" in str(error)


@pytest.mark.parametrize(
    ("tags", "rule"),
    [
        ({"": "v"}, "1..128 characters"),
        ({"K" * 129: "v"}, "1..128 characters"),
        ({"UserId": "v" * 257}, "at most 256"),
    ],
)
def test_key_and_value_lengths(tags: dict, rule: str) -> None:
    with pytest.raises(TagLimitError, match=rule) as caught:
        validate_tag_set(tags, WHERE)
    assert str(caught.value).startswith(WHERE)


def test_a_too_long_value_is_never_quoted_in_the_error() -> None:
    secret = "person-name-" + "x" * 300
    with pytest.raises(TagLimitError) as caught:
        validate_tag_set({"Name": secret}, WHERE)
    assert "person-name" not in str(caught.value)
    assert "Name" in str(caught.value)


def test_non_string_values_are_refused() -> None:
    with pytest.raises(TagLimitError, match="strings"):
        validate_tag_set({"Indexed": True}, WHERE)  # type: ignore[dict-item]


def test_location_with_a_version_keeps_bucket_and_key() -> None:
    with pytest.raises(TagLimitError) as caught:
        validate_tag_set({"": ""}, "s3://b/a/b.png?versionId=v1")
    assert caught.value.bucket == "b"
    assert "versionId=v1" in str(caught.value)


def test_merge_replaces_a_key_equal_case_insensitively_and_keeps_the_others() -> None:
    existing = {"userid": "u1", "indexed": "false", "Camera": "x100"}
    merged = merge_tag_sets(existing, {"Indexed": "true"})
    assert merged == {"userid": "u1", "Camera": "x100", "Indexed": "true"}
    assert existing == {"userid": "u1", "indexed": "false", "Camera": "x100"}  # input untouched


def test_merge_drops_every_case_variant_of_an_updated_key() -> None:
    merged = merge_tag_sets({"INDEXED": "no", "Indexed": "no", "other": "1"}, {"indexed": "true"})
    assert merged == {"other": "1", "indexed": "true"}


def test_merge_adds_new_keys_and_handles_empty_sides() -> None:
    assert merge_tag_sets({}, {"A": "1"}) == {"A": "1"}
    assert merge_tag_sets({"A": "1"}, {}) == {"A": "1"}
    assert merge_tag_sets({"A": "1"}, {"B": "2"}) == {"A": "1", "B": "2"}


def test_lookup_is_case_insensitive_and_prefers_the_exact_spelling() -> None:
    assert tag_lookup({"userid": "u1"}, "UserId") == "u1"
    assert tag_lookup({"USERID": "u2", "UserId": "u1"}, "UserId") == "u1"
    assert tag_lookup({"userid": "low", "USERID": "up"}, "UserId") == "up"  # smallest key: stable
    assert tag_lookup({"userid": "u1"}, "Properties") is None
    assert tag_lookup({}, "UserId") is None


@pytest.mark.parametrize("value", ["true", "True", "TRUE", " true ", "true\n"])
def test_true_markers(value: str) -> None:
    assert is_true_marker(value)


@pytest.mark.parametrize("value", [None, "", "false", "yes", "1", "t", "truee", "tr ue"])
def test_everything_else_is_not_a_true_marker(value: str | None) -> None:
    assert not is_true_marker(value)
