"""Reading S3 Inventory reports: manifests, discovery, CSV/ORC/Parquet data files, key decoding."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import threading
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Optional
from urllib.parse import quote, unquote_plus

import hypothesis
import pyarrow as pa
import pyarrow.orc as porc
import pyarrow.parquet as pq
import pytest
from hypothesis import strategies as st

from rivbulk_pipeline.core.errors import InventoryError
from rivbulk_pipeline.core.inventory.keys import unquote_plus_array
from rivbulk_pipeline.core.inventory.reader import (
    InventoryFile,
    InventoryManifest,
    iter_inventory_batches,
    load_manifest,
    parse_file_schema,
    parse_manifest,
    parse_report_folder,
    report_root,
)
from rivbulk_pipeline.core.model import INVENTORY_SCHEMA
from rivbulk_pipeline_tests.support.folder_store import FolderStore

FACTS_SCHEMA = (
    "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass, "
    "IsMultipartUploaded, ReplicationStatus, EncryptionStatus, ObjectLockRetainUntilDate, ObjectLockMode, "
    "ObjectLockLegalHoldStatus, IntelligentTieringAccessTier, BucketKeyStatus, ChecksumAlgorithm"
)
DEST = "inventory-bucket"


def manifest_doc(**overrides) -> dict:
    doc = {
        "sourceBucket": "example-source-bucket",
        "destinationBucket": "arn:aws:s3:::example-inventory-destination-bucket",
        "version": "2016-11-30",
        "creationTimestamp": "1514944800000",
        "fileFormat": "CSV",
        "fileSchema": FACTS_SCHEMA,
        "files": [
            {
                "key": "inv/example-source-bucket/cfg/data/939c6d46.csv.gz",
                "size": 2147483647,
                "MD5checksum": "f11166069f1990abeb9c97ace9cdfabc",
            }
        ],
    }
    doc.update(overrides)
    return doc


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    return FolderStore(tmp_path / "buckets")


def put_report(
    store: FolderStore,
    files: dict[str, bytes],
    *,
    fmt: str = "CSV",
    schema: str = FACTS_SCHEMA,
    folder: str = "inv/src/cfg/2026-11-20T08-15Z",
) -> InventoryManifest:
    """Write data files and a complete manifest (with checksum) the way AWS does."""
    for key, body in files.items():
        store.put_bytes(DEST, key, body)
    doc = manifest_doc(
        destinationBucket=f"arn:aws:s3:::{DEST}",
        sourceBucket="src",
        creationTimestamp="1795162500000",  # 2026-11-20T08:15:00Z
        fileFormat=fmt,
        fileSchema=schema,
        files=[{"key": k, "size": len(b), "MD5checksum": md5(b)} for k, b in files.items()],
    )
    body = json.dumps(doc).encode()
    store.put_bytes(DEST, f"{folder}/manifest.json", body)
    store.put_bytes(DEST, f"{folder}/manifest.checksum", (md5(body) + "\n").encode())
    return load_manifest(store, DEST, folder)


def read_all(store: FolderStore, manifest: InventoryManifest, **kwargs) -> pa.Table:
    batches = list(iter_inventory_batches(store, manifest, **kwargs))
    for batch in batches:
        assert batch.schema == INVENTORY_SCHEMA
    return pa.Table.from_batches(batches, schema=INVENTORY_SCHEMA)


def csv_gz(lines: list[str]) -> bytes:
    return gzip.compress("".join(lines).encode("utf-8"))


def row(*fields: str) -> str:
    return ",".join(f'"{f}"' for f in fields) + "\n"


# ---------------------------------------------------------------- manifest


def test_parse_manifest_reads_the_facts_example():
    body = json.dumps(manifest_doc()).encode()
    manifest = parse_manifest(body, "s3://b/m.json", md5(body))
    assert manifest.source_bucket == "example-source-bucket"
    assert manifest.destination_bucket == "example-inventory-destination-bucket"
    assert manifest.version == "2016-11-30"
    assert manifest.created_at == datetime(2018, 1, 3, 2, 0, tzinfo=timezone.utc)
    assert manifest.inventory_date == date(2018, 1, 3)
    assert manifest.file_format == "CSV"
    assert manifest.file_schema[:3] == ["Bucket", "Key", "VersionId"] and len(manifest.file_schema) == 18
    assert manifest.files == [
        InventoryFile(
            "inv/example-source-bucket/cfg/data/939c6d46.csv.gz", 2147483647, "f11166069f1990abeb9c97ace9cdfabc"
        )
    ]


def test_parse_manifest_accepts_a_plain_bucket_name_and_checksum_whitespace():
    body = json.dumps(manifest_doc(destinationBucket="plain-bucket")).encode()
    manifest = parse_manifest(body, "loc", f"  {md5(body).upper()}\n")
    assert manifest.destination_bucket == "plain-bucket"


def test_parse_manifest_without_checksum_text_skips_verification():
    body = json.dumps(manifest_doc()).encode()
    assert parse_manifest(body, "loc", None).source_bucket == "example-source-bucket"


def test_parse_manifest_rejects_a_checksum_mismatch():
    body = json.dumps(manifest_doc()).encode()
    with pytest.raises(InventoryError) as err:
        parse_manifest(body, "s3://dest/report/manifest.json", md5(body + b" "))
    assert err.value.location == "s3://dest/report/manifest.json"
    assert "checksum mismatch" in err.value.rule


@pytest.mark.parametrize(
    "body, rule",
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps(manifest_doc(fileFormat="Avro")).encode(), "unknown fileFormat"),
        (json.dumps(manifest_doc(fileSchema="Bucket, Size, ETag")).encode(), "Bucket and Key"),
        (json.dumps(manifest_doc(creationTimestamp="2018-01-03")).encode(), "epoch milliseconds"),
        (json.dumps(manifest_doc(files="nope")).encode(), "'files'"),
        (json.dumps(manifest_doc(files=[{"key": "a", "size": "1", "MD5checksum": "x"}])).encode(), "files[0]"),
        (json.dumps(manifest_doc(files=[{"key": "a", "size": 1}])).encode(), "files[0]"),
    ],
)
def test_parse_manifest_rejects_bad_manifests(body: bytes, rule: str):
    with pytest.raises(InventoryError) as err:
        parse_manifest(body, "s3://dest/x/manifest.json", None)
    assert rule in err.value.rule
    assert str(err.value).startswith("s3://dest/x/manifest.json: ")


@pytest.mark.parametrize(
    "field", ["sourceBucket", "destinationBucket", "version", "creationTimestamp", "fileFormat", "fileSchema", "files"]
)
def test_parse_manifest_names_a_missing_field(field: str):
    doc = manifest_doc()
    del doc[field]
    with pytest.raises(InventoryError) as err:
        parse_manifest(json.dumps(doc).encode(), "loc", None)
    assert repr(field) in err.value.rule


def test_parse_manifest_accepts_format_names_in_any_case():
    assert parse_manifest(json.dumps(manifest_doc(fileFormat="parquet")).encode(), "l", None).file_format == "Parquet"


def test_file_schema_in_the_orc_and_parquet_spellings_aws_documents():
    orc = "struct<bucket:string,key:string,version_id:string,size:bigint,last_modified_date:timestamp>"
    parquet = (
        "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); "
        "optional int64 size; optional int64 last_modified_date (TIMESTAMP_MILLIS); }"
    )
    assert parse_file_schema(orc) == ["bucket", "key", "version_id", "size", "last_modified_date"]
    assert parse_file_schema(parquet) == ["bucket", "key", "size", "last_modified_date"]
    assert parse_file_schema("Bucket, Key,Size ,ETag") == ["Bucket", "Key", "Size", "ETag"]
    body = json.dumps(manifest_doc(fileFormat="ORC", fileSchema="struct<bucket:string,size:bigint>")).encode()
    with pytest.raises(InventoryError, match="Bucket and Key"):
        parse_manifest(body, "l", None)


# ---------------------------------------------------------------- discovery


def test_report_root_with_and_without_prefix():
    assert report_root("inventories", "src", "daily") == "inventories/src/daily"
    assert report_root("inventories/", "src", "daily") == "inventories/src/daily"
    assert report_root("", "src", "daily") == "src/daily"


def test_parse_report_folder():
    assert parse_report_folder("2026-11-20T08-15Z") == datetime(2026, 11, 20, 8, 15, tzinfo=timezone.utc)
    assert parse_report_folder("inv/src/cfg/2026-11-20T08-15Z/") == datetime(2026, 11, 20, 8, 15, tzinfo=timezone.utc)
    for name in ("hive", "data/", "2026-11-20T08:15Z", "2026-13-20T08-15Z", "2026-11-20T08-15", "x2026-11-20T08-15Z"):
        assert parse_report_folder(name) is None, name


def test_report_folders_keeps_only_timestamp_folders_in_order(store: FolderStore):
    from rivbulk_pipeline.core.inventory.reports import report_folders

    for key in (
        "inv/src/cfg/2026-11-21T08-15Z/manifest.json",
        "inv/src/cfg/2026-11-20T08-15Z/manifest.json",
        "inv/src/cfg/hive/dt=2026-11-20-08-15/symlink.txt",
        "inv/src/cfg/data/a.csv.gz",
    ):
        store.put_bytes(DEST, key, b"x")
    found = report_folders(store, DEST, "inv/src/cfg")
    assert [f.name for f in found] == ["2026-11-20T08-15Z", "2026-11-21T08-15Z"]
    assert found[0].started_at == datetime(2026, 11, 20, 8, 15, tzinfo=timezone.utc)


def test_load_manifest_reads_a_complete_report(store: FolderStore):
    manifest = put_report(store, {"inv/src/cfg/data/a.csv.gz": csv_gz([])})
    assert manifest.destination_bucket == DEST
    assert manifest.inventory_date == date(2026, 11, 20)
    # a trailing slash on the folder is fine too
    assert load_manifest(store, DEST, "inv/src/cfg/2026-11-20T08-15Z/") == manifest


def test_load_manifest_without_checksum_is_an_incomplete_report(store: FolderStore):
    store.put_bytes(DEST, "inv/src/cfg/2026-11-20T08-15Z/manifest.json", json.dumps(manifest_doc()).encode())
    with pytest.raises(InventoryError) as err:
        load_manifest(store, DEST, "inv/src/cfg/2026-11-20T08-15Z")
    assert err.value.rule == "report incomplete: no manifest.checksum"
    assert "inv/src/cfg/2026-11-20T08-15Z" in err.value.location


def test_load_manifest_without_manifest_json(store: FolderStore):
    store.put_bytes(DEST, "inv/src/cfg/2026-11-20T08-15Z/manifest.checksum", b"0" * 32)
    with pytest.raises(InventoryError, match="no manifest.json"):
        load_manifest(store, DEST, "inv/src/cfg/2026-11-20T08-15Z")


def test_load_manifest_detects_a_manifest_changed_after_its_checksum(store: FolderStore):
    put_report(store, {"inv/src/cfg/data/a.csv.gz": csv_gz([])})
    store.put_bytes(DEST, "inv/src/cfg/2026-11-20T08-15Z/manifest.json", json.dumps(manifest_doc()).encode())
    with pytest.raises(InventoryError, match="checksum mismatch"):
        load_manifest(store, DEST, "inv/src/cfg/2026-11-20T08-15Z")


# ---------------------------------------------------------------- CSV


def test_reads_a_hand_written_csv_like_the_facts_example(store: FolderStore):
    # quoted fields, optional fields empty, trailing blank lines; the data file is not
    # under data/ (AWS's own examples use other folders)
    lines = [
        row(
            "src",
            "photos/alice+smith.jpg",
            "",
            "",
            "",
            "12345",
            "2026-11-20T08:15:00.000Z",
            "d41d8cd98f00b204e9800998ecf8427e",
            "STANDARD",
            "false",
            "",
            "SSE-S3",
            "",
            "",
            "",
            "",
            "DISABLED",
            "",
        ),
        row(
            "src",
            "photos/%C3%A9l%C3%A8ve%2B1.PNG",
            "3HL4kqtJ",
            "true",
            "false",
            "7",
            "2026-11-19T23:59:59.999Z",
            "abc",
            "GLACIER",
            "true",
            "COMPLETED",
            "SSE-KMS",
            "",
            "",
            "OFF",
            "",
            "ENABLED",
            "SHA256",
        ),
        row(
            "src",
            "photos/deleted.jpg",
            "v2",
            "false",
            "true",
            "",
            "2026-11-18T00:00:00.000Z",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ),
        "\n",
        "\n",
    ]
    manifest = put_report(store, {"inv/src/cfg/2026-11-20T08-15Z/files/939c6d46.csv.gz": csv_gz(lines)})
    table = read_all(store, manifest)
    assert table.to_pylist() == [
        {
            "bucket": "src",
            "key": "photos/alice smith.jpg",
            "version_id": None,
            "is_latest": None,
            "is_delete_marker": None,
            "size": 12345,
            "last_modified_date": datetime(2026, 11, 20, 8, 15, tzinfo=timezone.utc),
            "e_tag": "d41d8cd98f00b204e9800998ecf8427e",
            "storage_class": "STANDARD",
        },
        {
            "bucket": "src",
            "key": "photos/élève+1.PNG",
            "version_id": "3HL4kqtJ",
            "is_latest": True,
            "is_delete_marker": False,
            "size": 7,
            "last_modified_date": datetime(2026, 11, 19, 23, 59, 59, 999000, tzinfo=timezone.utc),
            "e_tag": "abc",
            "storage_class": "GLACIER",
        },
        {
            "bucket": "src",
            "key": "photos/deleted.jpg",
            "version_id": "v2",
            "is_latest": False,
            "is_delete_marker": True,
            "size": None,
            "last_modified_date": datetime(2026, 11, 18, tzinfo=timezone.utc),
            "e_tag": None,
            "storage_class": None,
        },
    ]


def test_csv_with_a_short_schema_leaves_absent_columns_null(store: FolderStore):
    lines = [row("src", "a%20b+c.jpg", "5")]
    manifest = put_report(store, {"inv/data/x.csv.gz": csv_gz(lines)}, schema="Bucket, Key, Size")
    table = read_all(store, manifest)
    assert table.column("key").to_pylist() == ["a b c.jpg"]
    assert table.column("size").to_pylist() == [5]
    assert table.column("version_id").null_count == 1 and table.column("last_modified_date").null_count == 1


def test_batches_are_bounded_and_files_are_read_in_manifest_order(store: FolderStore):
    first = [row("src", f"a/{i}.jpg", str(i)) for i in range(7)]
    second = [row("src", f"b/{i}.jpg", str(100 + i)) for i in range(3)]
    manifest = put_report(
        store, {"inv/data/2.csv.gz": csv_gz(second), "inv/data/1.csv.gz": csv_gz(first)}, schema="Bucket, Key, Size"
    )
    batches = list(iter_inventory_batches(store, manifest, batch_rows=3))
    assert [b.num_rows for b in batches] == [3, 3, 3, 1]
    keys = [k for b in batches for k in b.column("key").to_pylist()]
    assert keys == [f"b/{i}.jpg" for i in range(3)] + [f"a/{i}.jpg" for i in range(7)]


def test_empty_csv_file_and_empty_file_list_give_no_rows(store: FolderStore):
    manifest = put_report(store, {"inv/data/empty.csv.gz": csv_gz([]), "inv/data/blank.csv.gz": csv_gz(["\n\n"])})
    assert read_all(store, manifest).num_rows == 0
    manifest.files = []
    assert list(iter_inventory_batches(store, manifest)) == []


def test_spooled_files_are_removed_even_when_the_reader_stops_early(store: FolderStore, tmp_path: Path):
    spool = tmp_path / "spool"
    spool.mkdir()
    lines = [row("src", f"{i}.jpg", "1") for i in range(10)]
    manifest = put_report(
        store, {"inv/data/a.csv.gz": csv_gz(lines), "inv/data/b.csv.gz": csv_gz(lines)}, schema="Bucket, Key, Size"
    )
    batches = iter_inventory_batches(store, manifest, batch_rows=2, spool_dir=str(spool))
    next(batches)
    assert len(os.listdir(spool)) == 1  # one data file at a time, on disk, not in memory
    batches.close()
    assert os.listdir(spool) == []
    assert read_all(store, manifest, spool_dir=str(spool)).num_rows == 20
    assert os.listdir(spool) == []


def test_md5_mismatch_fails_before_any_row_of_that_file(store: FolderStore):
    manifest = put_report(store, {"inv/data/a.csv.gz": csv_gz([row("src", "a.jpg", "1")])}, schema="Bucket, Key, Size")
    store.put_bytes(DEST, "inv/data/a.csv.gz", csv_gz([row("src", "b.jpg", "1")]))  # replaced after the manifest
    batches = iter_inventory_batches(store, manifest)
    with pytest.raises(InventoryError) as err:
        next(batches)
    assert err.value.location == f"s3://{DEST}/inv/data/a.csv.gz"
    assert "MD5 mismatch" in err.value.rule


def test_missing_data_file(store: FolderStore):
    manifest = put_report(store, {"inv/data/a.csv.gz": csv_gz([])})
    os.remove(store._path(DEST, "inv/data/a.csv.gz"))
    with pytest.raises(InventoryError) as err:
        list(iter_inventory_batches(store, manifest))
    assert err.value.location == f"s3://{DEST}/inv/data/a.csv.gz"
    assert "missing" in err.value.rule


@pytest.mark.parametrize(
    "body",
    [
        gzip.compress("".join(row("src", f"k{i}.jpg", str(i)) for i in range(20000)).encode())[:-40],  # truncated
        b"this is not gzip at all",
    ],
    ids=["truncated", "not-gzip"],
)
def test_corrupt_gzip_is_named(store: FolderStore, body: bytes):
    # the MD5 matches (the file was written broken), so only the gzip layer can tell
    manifest = put_report(store, {"inv/data/bad.csv.gz": body}, schema="Bucket, Key, Size")
    with pytest.raises(InventoryError) as err:
        list(iter_inventory_batches(store, manifest))
    assert err.value.location == f"s3://{DEST}/inv/data/bad.csv.gz"
    assert "corrupt CSV data file" in err.value.rule


def test_wrong_column_count_is_named_without_echoing_the_row(store: FolderStore):
    lines = [row("src", "ok.jpg", "1"), row("src", "secret-person-name.jpg")]
    manifest = put_report(store, {"inv/data/a.csv.gz": csv_gz(lines)}, schema="Bucket, Key, Size")
    with pytest.raises(InventoryError) as err:
        list(iter_inventory_batches(store, manifest))
    assert err.value.location == f"s3://{DEST}/inv/data/a.csv.gz"
    assert "a row has 2 fields, the fileSchema has 3" in err.value.rule
    assert "secret-person-name" not in str(err.value)


@pytest.mark.parametrize(
    "schema, fields, rule",
    [
        ("Bucket, Key, Size", ("src", "k.jpg", "12kB"), "row 3: size is not a whole number"),
        ("Bucket, Key, IsLatest", ("src", "k.jpg", "yes"), "row 3: is_latest is not true/false"),
        (
            "Bucket, Key, LastModifiedDate",
            ("src", "k.jpg", "yesterday"),
            "row 3: last_modified_date is not an ISO-8601",
        ),
    ],
)
def test_unparseable_values_name_the_row(store: FolderStore, schema: str, fields: tuple, rule: str):
    good = {"Size": "1", "IsLatest": "true", "LastModifiedDate": "2026-11-20T08:15:00.000Z"}[schema.split(", ")[2]]
    lines = [row("src", "a.jpg", good), row("src", "b.jpg", good), row(*fields)]
    manifest = put_report(store, {"inv/data/a.csv.gz": csv_gz(lines)}, schema=schema)
    with pytest.raises(InventoryError) as err:
        list(iter_inventory_batches(store, manifest))
    assert err.value.location == f"s3://{DEST}/inv/data/a.csv.gz"
    assert rule in err.value.rule


def test_row_numbers_count_across_batches(store: FolderStore):
    lines = [row("src", f"{i}.jpg", str(i)) for i in range(5)] + [row("src", "x.jpg", "-")]
    manifest = put_report(store, {"inv/data/a.csv.gz": csv_gz(lines)}, schema="Bucket, Key, Size")
    with pytest.raises(InventoryError, match="row 6: size"):
        list(iter_inventory_batches(store, manifest, batch_rows=2))


# ---------------------------------------------------------------- ORC and Parquet


def columnar_table(keys: list[str], tz: Optional[str] = None) -> pa.Table:
    n = len(keys)
    return pa.table(
        {
            "bucket": ["src"] * n,
            "key": keys,
            "version_id": [""] + ["v"] * (n - 1),
            "is_latest": [True] * n,
            "is_delete_marker": [False] * n,
            "size": pa.array(range(n), pa.int64()),
            "last_modified_date": pa.array([datetime(2026, 11, 20, 8, 15)] * n, pa.timestamp("ms", tz=tz)),
            "e_tag": ["e"] * n,
            "storage_class": ["STANDARD"] * n,
            "is_multipart_uploaded": [False] * n,
        }
    )


def columnar_bytes(table: pa.Table, fmt: str, tmp_path: Path) -> bytes:
    path = tmp_path / f"file.{fmt}"
    if fmt == "ORC":
        porc.write_table(table, path, compression="zlib")
    else:
        pq.write_table(table, path, compression="snappy")
    return path.read_bytes()


ORC_SCHEMA = (
    "struct<bucket:string,key:string,version_id:string,is_latest:boolean,is_delete_marker:boolean,"
    "size:bigint,last_modified_date:timestamp,e_tag:string,storage_class:string,"
    "is_multipart_uploaded:boolean>"
)
PARQUET_SCHEMA = (
    "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8);"
    " optional binary version_id (UTF8); optional boolean is_latest;"
    " optional boolean is_delete_marker; optional int64 size;"
    " optional int64 last_modified_date (TIMESTAMP_MILLIS); optional binary e_tag (UTF8);"
    " optional binary storage_class (UTF8); optional boolean is_multipart_uploaded; }"
)


def put_columnar(store: FolderStore, tmp_path: Path, fmt: str, tables: list[pa.Table]) -> InventoryManifest:
    ext = ".orc" if fmt == "ORC" else ".parquet"
    files = {f"inv/data/{i}{ext}": columnar_bytes(t, fmt, tmp_path) for i, t in enumerate(tables)}
    return put_report(store, files, fmt=fmt, schema=ORC_SCHEMA if fmt == "ORC" else PARQUET_SCHEMA)


@pytest.mark.parametrize("fmt", ["ORC", "Parquet"])
def test_columnar_files_normalise_to_the_inventory_schema(store: FolderStore, tmp_path: Path, fmt: str):
    manifest = put_columnar(store, tmp_path, fmt, [columnar_table(["a.jpg", "b c.png"])])
    table = read_all(store, manifest)
    assert table.column("key").to_pylist() == ["a.jpg", "b c.png"]
    assert table.column("version_id").to_pylist() == [None, "v"]  # empty VersionId -> null
    assert table.column("size").to_pylist() == [0, 1]
    # no zone in the file: the time is UTC
    assert table.column("last_modified_date").to_pylist()[0] == datetime(2026, 11, 20, 8, 15, tzinfo=timezone.utc)


def test_parquet_with_zoned_timestamps_and_large_strings(store: FolderStore, tmp_path: Path):
    table = columnar_table(["a.jpg"], tz="UTC")
    table = table.set_column(1, "key", table.column("key").cast(pa.large_string()))
    manifest = put_columnar(store, tmp_path, "Parquet", [table])
    out = read_all(store, manifest)
    assert out.column("key").to_pylist() == ["a.jpg"]
    assert out.column("last_modified_date").to_pylist() == [datetime(2026, 11, 20, 8, 15, tzinfo=timezone.utc)]


@pytest.mark.parametrize("fmt", ["ORC", "Parquet"])
def test_columnar_key_encoding_forced_either_way(store: FolderStore, tmp_path: Path, fmt: str):
    keys = ["a%20b.jpg", "c+d%2B.jpg"]
    manifest = put_columnar(store, tmp_path, fmt, [columnar_table(keys)])
    assert read_all(store, manifest, columnar_keys_url_encoded=True).column("key").to_pylist() == [
        "a b.jpg",
        "c d+.jpg",
    ]
    assert read_all(store, manifest, columnar_keys_url_encoded=False).column("key").to_pylist() == keys


@pytest.mark.parametrize("fmt", ["ORC", "Parquet"])
def test_columnar_key_encoding_auto_decides_per_file(store: FolderStore, tmp_path: Path, fmt: str):
    encoded = ["photos/%C3%A9l%C3%A8ve.jpg", "x.jpg"]  # only escapes: looks encoded -> decoded
    raw_space = ["50%25 off.jpg", "x.jpg"]  # a space: never produced by encoding -> kept
    raw_non_ascii = ["caf%C3%A9-é.jpg"]  # non-ASCII -> kept
    raw_bad_escape = ["100%zz.jpg", "a%41.jpg"]  # '%' without two hex digits -> kept
    plain = ["a+b.jpg"]  # no escape at all -> kept as is
    manifest = put_columnar(
        store, tmp_path, fmt, [columnar_table(k) for k in (encoded, raw_space, raw_non_ascii, raw_bad_escape, plain)]
    )
    keys = read_all(store, manifest).column("key").to_pylist()
    assert keys == ["photos/élève.jpg", "x.jpg"] + raw_space + raw_non_ascii + raw_bad_escape + plain


def test_columnar_auto_looks_at_every_batch_of_the_file(store: FolderStore, tmp_path: Path):
    # the tell-tale space is in the last row: rows before it must not have been decoded
    keys = [f"k%41{i}.jpg" for i in range(9)] + ["with space.jpg"]
    manifest = put_columnar(store, tmp_path, "Parquet", [columnar_table(keys)])
    assert read_all(store, manifest, batch_rows=3).column("key").to_pylist() == keys


def test_columnar_file_without_a_key_column(store: FolderStore, tmp_path: Path):
    table = columnar_table(["a.jpg"]).drop_columns(["key"])
    manifest = put_columnar(store, tmp_path, "Parquet", [table])
    with pytest.raises(InventoryError) as err:
        list(iter_inventory_batches(store, manifest))
    assert err.value.location == f"s3://{DEST}/inv/data/0.parquet"
    assert "no key column" in err.value.rule


@pytest.mark.parametrize("fmt", ["ORC", "Parquet"])
def test_corrupt_columnar_file(store: FolderStore, tmp_path: Path, fmt: str):
    good = columnar_bytes(columnar_table(["a.jpg"]), fmt, tmp_path)
    ext = ".orc" if fmt == "ORC" else ".parquet"
    manifest = put_report(store, {f"inv/data/x{ext}": good[: len(good) // 2]}, fmt=fmt, schema=ORC_SCHEMA)
    with pytest.raises(InventoryError) as err:
        list(iter_inventory_batches(store, manifest))
    assert err.value.location == f"s3://{DEST}/inv/data/x{ext}"
    assert f"corrupt {fmt} data file" in err.value.rule


# ---------------------------------------------------------------- key decoding


def check_unquote(keys: list[Optional[str]]) -> None:
    expected = [None if k is None else unquote_plus(k) for k in keys]
    assert unquote_plus_array(pa.array(keys, pa.string())).to_pylist() == expected


PIECES = [
    "a",
    "Z",
    "/",
    " ",
    "+",
    "%",
    "%zz",
    "%4",
    "%41",
    "%2B",
    "%2b",
    "%25",
    "%20",
    "%%41",
    "é",
    "😀",
    "\u0000",
    "%C3%A9",
    "%E2%82%AC",
    "%F0%9F%98%80",
    "%C3",
    "%80",
    "%FF",
    "%C0%AF",
    "%ED%A0%80",
    "%F4%90%80%80",
]


def test_unquote_plus_array_matches_the_stdlib_on_random_keys():
    rnd = random.Random(20261120)
    for _ in range(400):
        keys = ["".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 12))) for _ in range(rnd.randint(0, 30))]
        keys += [None] if rnd.random() < 0.2 else []
        rnd.shuffle(keys)
        check_unquote(keys)
        # also on a slice: the array's offset must be honoured
        arr = pa.array(keys, pa.string())
        if len(arr) > 2:
            sliced = arr.slice(1, len(arr) - 2)
            assert unquote_plus_array(sliced).to_pylist() == [
                None if k is None else unquote_plus(k) for k in sliced.to_pylist()
            ]


def test_unquote_plus_array_known_cases():
    check_unquote(["a+b", "a%2Bb", "%E2%82%AC+%25", "100%", "%zz%4", "%%41", "%C3", "caf%C3%A9-é", ""])
    assert unquote_plus_array(pa.array(["a+b%20c"])).to_pylist() == ["a b c"]
    # an invalid sequence gets U+FFFD, like the stdlib
    assert unquote_plus_array(pa.array(["x%FFy"])).to_pylist() == ["x\ufffdy"]
    assert unquote_plus_array(pa.chunked_array([["a+b"], ["%41"]])).to_pylist() == ["a b", "A"]


# any Unicode text (no lone surrogates: S3 keys are UTF-8), percent-encoded the way
# AWS writes keys or raw, mixed with the tricky pieces and with random byte escapes
_text = st.text(st.characters(codec="utf-8"), max_size=8)
_piece = st.one_of(
    _text,
    _text.map(lambda s: quote(s, safe="/ ")),
    st.sampled_from(PIECES),
    st.binary(max_size=4).map(lambda b: "".join(f"%{x:02X}" for x in b)),
)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(st.lists(_piece, max_size=6).map("".join), max_size=20))
def test_unquote_plus_array_property(keys: list[str]):
    check_unquote(keys)


def test_unquote_plus_array_keeps_nulls_and_honours_slices_of_every_shape():
    keys = ["a+b", None, "%41%zz", "%FF+x", None, "caf%C3%A9", "", "100%"]
    expected = [None if k is None else unquote_plus(k) for k in keys]
    arr = pa.array(keys, pa.string())
    for start in range(len(keys)):  # every offset, so null bitmaps not aligned on a byte too
        for stop in range(start, len(keys) + 1):
            got = unquote_plus_array(arr.slice(start, stop - start))
            assert got.type == pa.string()
            assert got.to_pylist() == expected[start:stop]
    chunked = pa.chunked_array([arr.slice(1, 3), arr.slice(5), pa.array([], pa.string())])
    assert unquote_plus_array(chunked).to_pylist() == expected[1:4] + expected[5:]
    assert unquote_plus_array(pa.array(keys, pa.large_string()).slice(2)).to_pylist() == expected[2:]


def test_unquote_plus_array_on_empty_and_all_null_arrays():
    assert unquote_plus_array(pa.array([], pa.string())).to_pylist() == []
    assert unquote_plus_array(pa.chunked_array([], pa.string())).to_pylist() == []
    assert unquote_plus_array(pa.array([None, None], pa.string())).to_pylist() == [None, None]
    assert unquote_plus_array(pa.array(["", None, ""], pa.string())).to_pylist() == ["", None, ""]


def test_unquote_plus_array_repairs_only_the_invalid_rows():
    # one invalid row among many: the others keep the vectorised result, nulls stay null
    keys = [f"k{i}+%C3%A9" for i in range(1000)] + [None, "bad%C3+%28", "%E2%82", None, "%F0%9F%98%80"]
    check_unquote(keys)
    check_unquote(keys[::-1])


def _csv_parse_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "rivbulk-csv-parse"]


def big_csv(rows: int, bad_row: Optional[int] = None) -> bytes:
    """A CSV data file of several Arrow blocks (1 MB each); `bad_row` has a field missing."""
    lines = [
        row("src", f"people/{i:09d}+x.jpg", str(i)) if i != bad_row else row("src", f"secret-{i}.jpg")
        for i in range(rows)
    ]
    return csv_gz(lines)


def test_csv_parsing_ahead_stops_when_the_consumer_stops_early(store: FolderStore, tmp_path: Path):
    spool = tmp_path / "spool"
    spool.mkdir()
    manifest = put_report(store, {"inv/data/a.csv.gz": big_csv(200_000)}, schema="Bucket, Key, Size")
    batches = iter_inventory_batches(store, manifest, spool_dir=str(spool))
    first = next(batches)
    assert first.column(1)[0].as_py() == "people/000000000 x.jpg"
    batches.close()  # the parser is ahead, blocked on its full queue: it must still end
    assert _csv_parse_threads() == []
    assert os.listdir(spool) == []


def test_csv_parsing_ahead_reads_every_block_in_order(store: FolderStore):
    manifest = put_report(store, {"inv/data/a.csv.gz": big_csv(200_000)}, schema="Bucket, Key, Size")
    table = read_all(store, manifest, batch_rows=50_000)
    assert table.column("size").to_pylist() == list(range(200_000))
    assert _csv_parse_threads() == []


def test_csv_error_in_a_later_block_is_named_and_the_parser_stopped(store: FolderStore):
    manifest = put_report(store, {"inv/data/a.csv.gz": big_csv(200_000, bad_row=150_000)}, schema="Bucket, Key, Size")
    batches = iter_inventory_batches(store, manifest)
    assert next(batches).num_rows > 0  # rows before the bad block come through
    with pytest.raises(InventoryError) as err:
        for _ in batches:
            pass
    assert err.value.location == f"s3://{DEST}/inv/data/a.csv.gz"
    assert "a row has 2 fields, the fileSchema has 3" in err.value.rule
    assert "secret" not in str(err.value)
    assert _csv_parse_threads() == []
