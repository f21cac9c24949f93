"""Registration providers: the seed's S3 tags, and a user's own class by import path."""

import json

import pyarrow as pa
import pytest

from rivbulk_pipeline.core.errors import RegistrationRejected
from rivbulk_pipeline.core.model import CANDIDATE_SCHEMA, ObjectRef, Reason
from rivbulk_pipeline.core.steps.qualify import decide_from_tags, qualify_candidates
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.resources.registration import CustomRegistrationProvider, S3TagRegistrationProvider

IMAGES = "images"


@pytest.fixture
def store(tmp_path):
    store = LocalObjectStore(root=str(tmp_path / "store"))
    store.create_bucket(IMAGES)
    store.create_bucket("secrets")
    return store


def _provider(store, **kwargs):
    return S3TagRegistrationProvider(store=store, allowed_property_buckets=[IMAGES], **kwargs)


def test_tag_keys_are_case_insensitive_and_markers_need_true(store):
    provider = _provider(store)
    ref = ObjectRef(IMAGES, "a.png")
    assert decide_from_tags(ref, {"userid": "ann"}, provider).user_id == "ann"
    assert decide_from_tags(ref, {"USERID": "ann", "ignore": "TRUE"}, provider).reason == Reason.IGNORED
    assert decide_from_tags(ref, {"UserId": "ann", "INDEXED": " True "}, provider).reason == Reason.INDEXED_TAG
    assert decide_from_tags(ref, {"UserId": "ann", "Ignore": "yes", "Indexed": "false"}, provider).qualified
    assert decide_from_tags(ref, {"Name": "ann"}, provider).reason == Reason.NO_USER_ID
    assert decide_from_tags(ref, {"UserId": "u" * 128}, provider).qualified
    too_long = decide_from_tags(ref, {"UserId": "u" * 129}, provider)
    assert too_long.reason == Reason.BAD_USER_ID and "128" in too_long.detail
    assert decide_from_tags(ref, {"UserId": ""}, provider).reason == Reason.BAD_USER_ID


def test_properties_outside_allowed_buckets_are_refused_without_a_fetch(store):
    store.put_bytes("secrets", "p.json", b'{"a": "b"}')
    decision = decide_from_tags(
        ObjectRef(IMAGES, "a.png"), {"UserId": "ann", "Properties": "s3://secrets/p.json"}, _provider(store)
    )
    assert (
        decision.reason == Reason.PROPERTIES_NOT_ALLOWED and "a.png" in decision.detail and "secrets" in decision.detail
    )


def test_properties_are_loaded_and_validated(store):
    store.put_bytes(IMAGES, "p/ok.json", json.dumps({"fname": "Ann"}).encode())
    store.put_bytes(IMAGES, "p/big.json", json.dumps({"bio": "x" * 500}).encode())
    provider = _provider(store, max_properties_bytes=200)
    assert provider.load_properties(f"s3://{IMAGES}/p/ok.json") == {"fname": "Ann"}
    with pytest.raises(RegistrationRejected, match="200-byte bound"):
        provider.load_properties(f"s3://{IMAGES}/p/big.json")
    missing = decide_from_tags(
        ObjectRef(IMAGES, "a.png"), {"UserId": "ann", "Properties": f"s3://{IMAGES}/p/none.json"}, provider
    )
    assert missing.reason == Reason.PROPERTIES_NOT_FOUND and "none.json" in missing.detail


def test_a_user_provider_class_by_import_path(store, tmp_path):
    store.put_bytes(
        IMAGES, "roster.csv", b"key,user_id,properties_key\nstaff/1.png,emp-1,props/1.json\nstaff/2.png,emp-2,\n"
    )
    store.put_bytes(IMAGES, "props/1.json", json.dumps({"team": "Blue"}).encode())
    for n in (1, 2, 3):
        store.put_bytes(IMAGES, f"staff/{n}.png", b"image")
    provider = CustomRegistrationProvider(
        class_path="rivbulk_pipeline.examples.csv_provider:CsvRosterProvider",
        options={"bucket": IMAGES, "roster_key": "roster.csv"},
        store=store,
    )
    candidates = pa.RecordBatch.from_pydict(
        {
            "bucket": [IMAGES] * 3,
            "key": ["staff/1.png", "staff/2.png", "staff/3.png"],
            "version_id": [None] * 3,
            "size": [1, 1, 1],
            "e_tag": ["a", "b", "c"],
        },
        schema=CANDIDATE_SCHEMA,
    )
    history = SqliteImportHistory(db_path=str(tmp_path / "history.sqlite"))
    (batch,) = list(qualify_candidates([candidates], store=store, provider=provider, history=history, concurrency=4))
    rows = batch.to_pylist()
    assert [(r["qualified"], r["user_id"], r["reason"]) for r in rows] == [
        (True, "emp-1", "qualified"),
        (True, "emp-2", "qualified"),
        (False, None, "no_user_id"),
    ]
    assert provider.load_properties(rows[0]["properties_ref"]) == {"team": "Blue"}


class ExplodingProvider:
    def registration_for(self, obj, tags):
        if obj.key == "boom.png":
            raise RuntimeError("database is down: secret-detail")
        return None

    def load_properties(self, ref):
        return {}


def test_a_provider_that_raises_fails_only_that_object(store):
    provider = CustomRegistrationProvider(class_path=f"{__name__}:ExplodingProvider", store=store)
    decision = decide_from_tags(ObjectRef(IMAGES, "boom.png"), {}, provider)
    assert decision.reason == Reason.PROVIDER_ERROR and "RuntimeError" in decision.detail
    assert "secret-detail" not in decision.detail
    assert decide_from_tags(ObjectRef(IMAGES, "fine.png"), {}, provider).reason == Reason.NO_USER_ID


@pytest.mark.parametrize("path, words", [("nocolon", "must look like"), ("json:loads", "has no registration_for")])
def test_bad_provider_paths_are_clear(store, path, words):
    with pytest.raises((ValueError, TypeError), match=words):
        CustomRegistrationProvider(class_path=path, store=store).registration_for(ObjectRef(IMAGES, "a.png"), {})
