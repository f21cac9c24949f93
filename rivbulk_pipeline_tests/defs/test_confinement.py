"""Inputs stay where they belong (issue 17, item 5): inventory rows of another bucket are
excluded with a reason, the local store refuses any path through a symbolic link (a
properties.json linked to a file elsewhere is never read), and settings that would hold a key
are refused at load, naming the variable, never the value."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.core.errors import AccessDenied
from rivbulk_pipeline.core.inventory.batch_manifest import OTHER_BUCKET, candidate_mask, exclusion_reasons
from rivbulk_pipeline.core.model import CANDIDATE_SCHEMA, INVENTORY_SCHEMA
from rivbulk_pipeline.core.steps.qualify import qualify_candidates
from rivbulk_pipeline.core.steps.tables import table_location, write_table
from rivbulk_pipeline.defs.assets import bulk_load_assets
from rivbulk_pipeline.defs.partitions import inventory_dates
from rivbulk_pipeline.resources.deployment import build_resources
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.resources.registration import S3TagRegistrationProvider
from rivbulk_pipeline.settings import Settings, SettingsError

BUCKET = "faces"
DATE = "2026-11-20"


def _inventory(rows: list[tuple[str, str]]) -> pa.RecordBatch:
    n = len(rows)
    return pa.RecordBatch.from_pydict(
        {"bucket": [b for b, _ in rows], "key": [k for _, k in rows], "version_id": [None] * n, "is_latest": [None] * n,
         "is_delete_marker": [None] * n, "size": [10] * n, "last_modified_date": [None] * n, "e_tag": ["e"] * n,
         "storage_class": ["STANDARD"] * n},
        schema=INVENTORY_SCHEMA,
    )  # fmt: skip


def test_rows_of_another_bucket_are_excluded_first_with_their_reason():
    batch = _inventory(
        [("faces", "a.png"), ("elsewhere", "b.png"), ("elsewhere", "c.txt"), (None, "d.png"), ("faces", "e.txt")]
    )
    assert candidate_mask(batch, "faces").to_pylist() == [True, False, False, False, False]
    assert exclusion_reasons(batch, "faces").to_pylist() == [
        None,
        OTHER_BUCKET,
        OTHER_BUCKET,
        OTHER_BUCKET,
        "not_an_image",
    ]


def test_the_batch_manifest_asset_excludes_another_buckets_rows(local_settings):
    settings, resources = local_settings, build_resources(local_settings)
    store = resources["store"]
    store.create_bucket(settings.output_bucket_name)
    location = table_location(settings.output_bucket_name, settings.output_prefix, "inventory_report", DATE)
    rows = [(settings.image_bucket, "people/a.png"), ("someone-elses-bucket", "people/b.png")]
    write_table(store, location, INVENTORY_SCHEMA, [_inventory(rows)])
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(inventory_dates.name, [DATE])
    selected = [a for a in bulk_load_assets if a.key.path[-1] == "batch_manifest"]
    result = dg.materialize(
        bulk_load_assets, selection=selected, partition_key=DATE, resources=resources, instance=instance
    )
    metadata = result.asset_materializations_for_node("batch_manifest")[0].metadata
    assert metadata["candidates"].value == 1 and metadata["excluded_other_bucket"].value == 1
    stored = pq.read_table(metadata["table_location"].value)
    assert stored.schema == CANDIDATE_SCHEMA and stored.column("key").to_pylist() == ["people/a.png"]


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    local = LocalObjectStore(root=str(tmp_path / "store"))
    local.create_bucket(BUCKET)
    local.create_bucket("other")
    return local


def test_a_properties_file_linked_to_a_file_outside_the_store_is_never_read(store: LocalObjectStore, tmp_path: Path):
    secret = tmp_path / "outside" / "hr-record.json"
    secret.parent.mkdir()
    secret.write_text('{"salary": "Bob-earns-a-lot"}')
    folder = tmp_path / "store" / BUCKET / "props"
    folder.mkdir()
    os.symlink(secret, folder / "bob.json")
    store.put_bytes(BUCKET, "people/bob.png", face_image(5))
    store.put_tags(BUCKET, "people/bob.png", {"UserId": "bob", "Properties": f"s3://{BUCKET}/props/bob.json"})
    with pytest.raises(AccessDenied, match="symbolic link"):
        store.get_bytes(BUCKET, "props/bob.json")
    provider = S3TagRegistrationProvider(store=store, allowed_property_buckets=[BUCKET])
    info = store.head(BUCKET, "people/bob.png")
    candidates = pa.RecordBatch.from_pylist(
        [dict(bucket=BUCKET, key="people/bob.png", version_id=None, size=info.size, e_tag=info.etag)],
        schema=CANDIDATE_SCHEMA,
    )
    [decided] = list(qualify_candidates([candidates], store=store, provider=provider,
                                        history=SqliteImportHistory(db_path=str(tmp_path / "h.sqlite"))))  # fmt: skip
    row = decided.to_pylist()[0]
    assert not row["qualified"] and row["reason"] == "access_denied"
    assert "Bob-earns" not in repr(row)


def test_every_path_through_a_link_is_refused_inside_the_store_too(store: LocalObjectStore, tmp_path: Path):
    store.put_bytes("other", "real.png", b"other bucket's object")
    faces = tmp_path / "store" / BUCKET
    os.symlink(tmp_path / "store" / "other" / "real.png", faces / "linked.png")  # into another bucket
    os.symlink(tmp_path / "store" / "other", faces / "folder")  # a linked folder
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, faces / "out")
    for call in (lambda: store.head(BUCKET, "linked.png"), lambda: store.get_tags(BUCKET, "folder/real.png"),
                 lambda: store.get_bytes(BUCKET, "folder/real.png", max_bytes=100),
                 lambda: store.put_bytes(BUCKET, "out/written.png", b"x")):  # fmt: skip
        with pytest.raises(AccessDenied, match="symbolic link"):
            call()
    assert list(outside.iterdir()) == []  # nothing was written through the link
    assert store.get_bytes("other", "real.png") == b"other bucket's object"  # the real file is fine


def test_a_folder_replaced_by_a_link_after_it_was_read_is_refused(store: LocalObjectStore, tmp_path: Path):
    # The store remembers folders it resolved; a link put in a folder's place (or above it) must
    # still be seen, since it leads to another inode.
    store.put_bytes(BUCKET, "team/a.png", b"ours")
    assert store.get_bytes(BUCKET, "team/a.png") == b"ours"  # the folder is resolved and remembered
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.png").write_bytes(b"theirs")
    faces = tmp_path / "store" / BUCKET
    os.rename(faces / "team", tmp_path / "moved-away")
    os.symlink(outside, faces / "team")
    with pytest.raises(AccessDenied, match="symbolic link"):
        store.get_bytes(BUCKET, "team/a.png")


def test_a_store_whose_root_is_itself_a_link_works(tmp_path: Path):
    (tmp_path / "real-root").mkdir()
    os.symlink(tmp_path / "real-root", tmp_path / "root-link")
    linked = LocalObjectStore(root=str(tmp_path / "root-link"))
    linked.create_bucket(BUCKET)
    linked.put_bytes(BUCKET, "a/b.png", b"ok")
    assert linked.get_bytes(BUCKET, "a/b.png") == b"ok" and linked.head(BUCKET, "a/b.png").size == 2


@pytest.mark.parametrize(
    "variable, value",
    [
        ("RIVBULK_GATEWAY_URL", "https://apikey:SeKrEt123@gw.example.com/prod"),
        ("RIVBULK_GATEWAY_URL", "https://gw.example.com/prod?api_key=SeKrEt123"),
        ("RIVBULK_ENDPOINT_URL", "http://minio:SeKrEt123@127.0.0.1:9000"),
    ],
)
def test_a_url_setting_holding_a_key_is_refused_naming_the_variable_not_the_value(variable: str, value: str):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {"RIVBULK_DEPLOYMENT": "aws", "RIVBULK_GATEWAY_URL": "https://gw.example.com/prod", variable: value}
        )
    assert variable in str(caught.value) and "SeKrEt123" not in str(caught.value)
    assert "credentials" in str(caught.value)


def test_no_invalid_value_is_echoed_in_a_settings_error():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"RIVBULK_INDEX_RATE": "sk_live_SeKrEt123", "RIVBULK_PROVIDER_OPTIONS": "{SeKrEt123"})
    message = str(caught.value)
    assert "RIVBULK_INDEX_RATE" in message and "RIVBULK_PROVIDER_OPTIONS" in message
    assert "SeKrEt" not in message and "sk_live" not in message
