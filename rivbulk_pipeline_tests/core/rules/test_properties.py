import json

import pytest

from rivbulk_pipeline.core.errors import RegistrationRejected
from rivbulk_pipeline.core.model import Reason
from rivbulk_pipeline.core.rules.properties import parse_properties, parse_properties_uri


def test_a_mapping_of_strings_is_accepted():
    assert parse_properties(json.dumps({"fname": "Fred", "lname": "Flintstone"}).encode(), "loc") == {
        "fname": "Fred",
        "lname": "Flintstone",
    }


@pytest.mark.parametrize(
    "raw, words",
    [
        (b'["a", "b"]', "got a JSON array"),
        (b'"just text"', "got a JSON string"),
        (b'{"age": 42}', "value #1 is a JSON number"),
        (b'{"a": "x", "b": {"nested": "y"}}', "value #2 is a JSON object"),
        (b'{"a": null}', "value #1 is a JSON null"),
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
    ],
)
def test_anything_else_is_rejected_naming_the_file_and_rule(raw, words):
    with pytest.raises(RegistrationRejected) as caught:
        parse_properties(raw, "s3://images/props/p.json")
    assert caught.value.reason == Reason.BAD_PROPERTIES
    assert "s3://images/props/p.json" in caught.value.detail and words in caught.value.detail


def test_property_values_never_appear_in_errors():
    with pytest.raises(RegistrationRejected) as caught:
        parse_properties(b'{"ssn": "123-45-6789", "n": 5}', "loc")
    assert "123-45-6789" not in str(caught.value)


def test_size_bound():
    raw = json.dumps({"bio": "x" * 2000}).encode()
    with pytest.raises(RegistrationRejected, match="over the 1000-byte bound"):
        parse_properties(raw, "loc", max_bytes=1000)


def test_uri_must_be_an_allowed_bucket_json_path():
    assert parse_properties_uri("s3://images/a/b.JSON", ["images"], "obj") == ("images", "a/b.JSON")
    for uri, words in [
        ("https://images/a.json", "must be an s3://"),
        ("s3://images", "must be an s3://"),
        ("s3://images/a.txt", "must end in .json"),
        ("s3://secrets/a.json", "'secrets' is not an allowed"),
    ]:
        with pytest.raises(RegistrationRejected, match=words) as caught:
            parse_properties_uri(uri, ["images"], "s3://images/x.png")
        assert caught.value.reason == Reason.PROPERTIES_NOT_ALLOWED
