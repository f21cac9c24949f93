"""Writing inventory reports, and reading them back with the reader (all three formats)."""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote_plus

import pyarrow.orc as porc
import pyarrow.parquet as pq
import pytest

from rivbulk_pipeline.core.inventory.reader import iter_inventory_batches, load_manifest
from rivbulk_pipeline.core.inventory.reports import ReportFolder, report_folders
from rivbulk_pipeline.core.inventory.writer import write_inventory_report
from rivbulk_pipeline.core.model import ObjectInfo, listing_batch
from rivbulk_pipeline_tests.support.folder_store import FolderStore

DEST = "inventory-bucket"
CREATED = datetime(2026, 11, 20, 8, 15, 42, tzinfo=timezone.utc)
TRICKY_KEYS = [
    "plain.jpg",
    "with space.jpg",
    "plus+sign.png",
    "percent%.jpeg",
    "literal%2B.jpg",
    "a%41b.jpg",
    "dir/sub dir/élève 😀.JPG",
    "日本語/写真.png",
    'comma,quote"semi;.jpg',
    "trailing/",
]


def info(key: str, i: int = 0, **kw) -> ObjectInfo:
    base = dict(
        bucket="src",
        key=key,
        size=1000 + i,
        etag=f"{i:032x}",
        last_modified=datetime(2026, 11, 1, 12, 0, 0, 123000, tzinfo=timezone.utc) + timedelta(minutes=i),
        storage_class="STANDARD",
    )
    base.update(kw)
    return ObjectInfo(**base)


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    return FolderStore(tmp_path / "buckets")


def write(store: FolderStore, objects, **kw) -> str:
    args = dict(
        source_bucket="src",
        destination_bucket=DEST,
        destination_prefix="inventories",
        config_id="daily",
        created_at=CREATED,
    )
    args.update(kw)
    return write_inventory_report(store, objects, **args)


def read_rows(store: FolderStore, manifest_key: str, **kw) -> list[dict]:
    manifest = load_manifest(store, DEST, manifest_key.rsplit("/", 1)[0])
    return [r for batch in iter_inventory_batches(store, manifest, **kw) for r in batch.to_pylist()]


@pytest.mark.parametrize("fmt", ["CSV", "ORC", "Parquet"])
def test_round_trip_current_versions(store: FolderStore, fmt: str):
    objects = [info(k, i) for i, k in enumerate(TRICKY_KEYS)]
    rows = read_rows(store, write(store, objects, file_format=fmt))
    assert rows == [
        {
            "bucket": "src",
            "key": o.key,
            "version_id": None,
            "is_latest": None,
            "is_delete_marker": None,
            "size": o.size,
            "last_modified_date": o.last_modified,
            "e_tag": o.etag,
            "storage_class": "STANDARD",
        }
        for o in objects
    ]


@pytest.mark.parametrize("fmt", ["CSV", "ORC", "Parquet"])
def test_round_trip_all_versions(store: FolderStore, fmt: str):
    objects = [
        info("a b+c.jpg", 0, version_id="v2", is_latest=True),
        info("a b+c.jpg", 1, version_id="v1", is_latest=False),
        info("gone%2B.jpg", 2, version_id="dm", is_latest=True, is_delete_marker=True),
        info("pre-versioning.jpg", 3, version_id=None),
    ]
    rows = read_rows(store, write(store, objects, file_format=fmt, include_versions=True))
    assert [(r["key"], r["version_id"], r["is_latest"], r["is_delete_marker"]) for r in rows] == [
        ("a b+c.jpg", "v2", True, False),
        ("a b+c.jpg", "v1", False, False),
        ("gone%2B.jpg", "dm", True, True),
        ("pre-versioning.jpg", None, True, False),  # the null version: an empty VersionId
    ]
    marker = rows[2]
    assert marker["size"] is None and marker["e_tag"] is None and marker["storage_class"] is None
    assert marker["last_modified_date"] == objects[2].last_modified


def test_current_versions_report_leaves_out_old_versions_and_delete_markers(store: FolderStore):
    objects = [
        info("keep.jpg", 0),
        info("old.jpg", 1, version_id="v1", is_latest=False),
        info("marker.jpg", 2, is_delete_marker=True),
    ]
    assert [r["key"] for r in read_rows(store, write(store, objects))] == ["keep.jpg"]


def test_layout_and_write_order(store: FolderStore):
    manifest_key = write(store, [info("a.jpg")])
    root = "inventories/src/daily"
    assert manifest_key == f"{root}/2026-11-20T08-15Z/manifest.json"
    data_keys = [k for k in store.writes if "/data/" in k]
    assert len(data_keys) == 1 and data_keys[0].startswith(f"{root}/data/") and data_keys[0].endswith(".csv.gz")
    assert store.writes == [
        data_keys[0],
        manifest_key,
        f"{root}/hive/dt=2026-11-20-08-15/symlink.txt",
        f"{root}/2026-11-20T08-15Z/manifest.checksum",  # last: the "report complete" signal
    ]
    doc = json.loads(store.get_bytes(DEST, manifest_key))
    assert doc["destinationBucket"] == f"arn:aws:s3:::{DEST}"
    assert doc["sourceBucket"] == "src"
    assert doc["creationTimestamp"] == str(int(CREATED.timestamp() * 1000))
    assert doc["fileFormat"] == "CSV"
    assert doc["fileSchema"] == "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass"
    assert doc["files"][0]["key"] == data_keys[0]
    assert doc["files"][0]["size"] == len(store.get_bytes(DEST, data_keys[0]))
    symlink = store.get_bytes(DEST, f"{root}/hive/dt=2026-11-20-08-15/symlink.txt").decode()
    assert symlink == f"s3://{DEST}/{data_keys[0]}\n"
    assert report_folders(store, DEST, root) == [
        ReportFolder("2026-11-20T08-15Z", datetime(2026, 11, 20, 8, 15, tzinfo=timezone.utc))
    ]


def test_empty_prefix_has_no_leading_slash(store: FolderStore):
    assert write(store, [], destination_prefix="") == "src/daily/2026-11-20T08-15Z/manifest.json"


def test_csv_data_file_is_written_like_aws(store: FolderStore):
    key = "dir/a b+c%.jpg"
    objects = [info(key, 0, version_id="v1"), info("x.png", 1, version_id=None)]
    manifest = load_manifest(store, DEST, write(store, objects, include_versions=True).rsplit("/", 1)[0])
    text = gzip.decompress(store.get_bytes(DEST, manifest.files[0].key)).decode()
    lines = text.splitlines()
    assert lines[0] == (
        f'"src","{quote_plus(key, safe="/")}","v1","true","false","1000","2026-11-01T12:00:00.123Z",'
        f'"{0:032x}","STANDARD"'
    )
    assert lines[0].split(",")[1] == '"dir/a+b%2Bc%25.jpg"'
    assert lines[1].split(",")[2] == '""'  # the null version: empty, quoted
    assert all(
        field.startswith('"') for line in lines for field in next(csv.reader(io.StringIO(line), quoting=csv.QUOTE_NONE))
    )
    assert manifest.file_schema == [
        "Bucket",
        "Key",
        "VersionId",
        "IsLatest",
        "IsDeleteMarker",
        "Size",
        "LastModifiedDate",
        "ETag",
        "StorageClass",
    ]


def test_rows_per_file_splits_data_files(store: FolderStore):
    objects = [info(f"img/{i:03d}.jpg", i) for i in range(25)]
    manifest_key = write(store, objects, rows_per_file=10)
    manifest = load_manifest(store, DEST, manifest_key.rsplit("/", 1)[0])
    assert len(manifest.files) == 3
    assert len({f.key for f in manifest.files}) == 3
    assert [r["key"] for r in read_rows(store, manifest_key)] == [o.key for o in objects]


def test_columnar_compression_and_schema_text(store: FolderStore, tmp_path: Path):
    orc_key = write(store, [info("a.jpg")], file_format="ORC", config_id="orc")
    pq_key = write(store, [info("a.jpg")], file_format="parquet", config_id="pq")
    orc_manifest = load_manifest(store, DEST, orc_key.rsplit("/", 1)[0])
    pq_manifest = load_manifest(store, DEST, pq_key.rsplit("/", 1)[0])
    assert orc_manifest.file_format == "ORC" and pq_manifest.file_format == "Parquet"
    assert orc_manifest.file_schema == ["bucket", "key", "size", "last_modified_date", "e_tag", "storage_class"]
    assert pq_manifest.file_schema == orc_manifest.file_schema
    orc_path = store._path(DEST, orc_manifest.files[0].key)
    pq_path = store._path(DEST, pq_manifest.files[0].key)
    assert orc_path.suffix == ".orc" and pq_path.suffix == ".parquet"
    assert porc.ORCFile(str(orc_path)).compression == "ZLIB"
    assert pq.ParquetFile(pq_path).metadata.row_group(0).column(0).compression == "SNAPPY"
    # snake_case columns, timestamps without a zone
    schema = pq.ParquetFile(pq_path).schema_arrow
    assert schema.names == ["bucket", "key", "size", "last_modified_date", "e_tag", "storage_class"]
    assert schema.field("last_modified_date").type.tz is None


@pytest.mark.parametrize("fmt", ["ORC", "Parquet"])
def test_columnar_keys_written_encoded_read_back_by_any_mode(store: FolderStore, fmt: str):
    objects = [info("a%41 b+c.jpg"), info("élève.png", 1)]
    manifest_key = write(store, objects, file_format=fmt, columnar_keys_url_encoded=True)
    manifest = load_manifest(store, DEST, manifest_key.rsplit("/", 1)[0])
    raw = (
        porc.ORCFile(str(store._path(DEST, manifest.files[0].key))).read()
        if fmt == "ORC"
        else pq.read_table(store._path(DEST, manifest.files[0].key))
    )
    assert raw.column("key").to_pylist() == ["a%2541+b%2Bc.jpg", "%C3%A9l%C3%A8ve.png"]
    expected = [o.key for o in objects]
    assert [r["key"] for r in read_rows(store, manifest_key)] == expected  # auto
    assert [r["key"] for r in read_rows(store, manifest_key, columnar_keys_url_encoded=True)] == expected
    assert [r["key"] for r in read_rows(store, manifest_key, columnar_keys_url_encoded=False)] == [
        "a%2541+b%2Bc.jpg",
        "%C3%A9l%C3%A8ve.png",
    ]


def test_empty_listing_gives_a_valid_empty_report(store: FolderStore):
    manifest_key = write(store, [])
    manifest = load_manifest(store, DEST, manifest_key.rsplit("/", 1)[0])
    assert manifest.files == []
    assert read_rows(store, manifest_key) == []


def test_writer_streams_a_generator(store: FolderStore):
    produced = []

    def listing():
        for i in range(30):
            produced.append(i)
            yield info(f"{i}.jpg", i)

    manifest_key = write(store, listing(), rows_per_file=7)
    assert produced == list(range(30))
    assert len(read_rows(store, manifest_key)) == 30


def test_spool_files_are_removed(store: FolderStore, tmp_path: Path):
    spool = tmp_path / "spool"
    spool.mkdir()
    write(store, [info(f"{i}.jpg", i) for i in range(5)], rows_per_file=2, spool_dir=str(spool))
    assert list(spool.iterdir()) == []

    def failing():  # fails with a data file half written (one chunk of 8192 rows is on disk)
        for i in range(8200):
            yield info(f"{i}.jpg", i)
        raise RuntimeError("listing failed")

    with pytest.raises(RuntimeError):
        write(store, failing(), spool_dir=str(spool), config_id="other")
    assert list(spool.iterdir()) == []
    assert not store.exists(DEST, "inventories/src/other/2026-11-20T08-15Z/manifest.checksum")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"created_at": datetime(2026, 11, 20)}, "timezone-aware"),
        ({"file_format": "Avro"}, "file_format"),
        ({"rows_per_file": 0}, "rows_per_file"),
    ],
)
def test_bad_arguments(store: FolderStore, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        write(store, [info("a.jpg")], **kwargs)
    assert store.writes == []


def test_created_at_in_another_zone_is_converted_to_utc(store: FolderStore):
    local = datetime(2026, 11, 20, 1, 15, tzinfo=timezone(timedelta(hours=-7)))
    manifest_key = write(store, [], created_at=local)
    assert manifest_key.endswith("/2026-11-20T08-15Z/manifest.json")


@pytest.mark.parametrize("fmt", ["CSV", "ORC", "Parquet"])
def test_a_listing_in_batches_gives_the_same_rows_as_objects_one_by_one(store: FolderStore, fmt: str):
    objects = [
        info(k, i, last_modified=datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=timezone.utc) + timedelta(seconds=i))
        for i, k in enumerate(sorted(TRICKY_KEYS * 3, key=str.encode))
    ]
    one_by_one = write(store, objects, file_format=fmt, config_id="objects")
    in_batches = write(
        store,
        [listing_batch(objects[:7]), listing_batch([]), listing_batch(objects[7:])],
        file_format=fmt,
        config_id="batches",
    )

    def data(manifest_key: str):
        """The data file's rows as written: CSV text, or the ORC/Parquet table with its schema."""
        [data_file] = load_manifest(store, DEST, manifest_key.rsplit("/", 1)[0]).files
        path = str(store._path(DEST, data_file.key))
        if fmt == "CSV":
            return gzip.decompress(store.get_bytes(DEST, data_file.key))
        return porc.ORCFile(path).read() if fmt == "ORC" else pq.read_table(path)

    assert data(in_batches).equals(data(one_by_one)) if fmt != "CSV" else data(in_batches) == data(one_by_one)
    assert [r["key"] for r in read_rows(store, in_batches)] == [o.key for o in objects]


def test_every_csv_line_is_what_the_stdlib_writes(store: FolderStore):
    objects = [info(k, i) for i, k in enumerate(TRICKY_KEYS)]
    manifest = load_manifest(store, DEST, write(store, [listing_batch(objects)]).rsplit("/", 1)[0])
    text = gzip.decompress(store.get_bytes(DEST, manifest.files[0].key)).decode()
    expected = io.StringIO()
    writer = csv.writer(expected, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for o in objects:
        stamp = o.last_modified.strftime("%Y-%m-%dT%H:%M:%S.") + f"{o.last_modified.microsecond // 1000:03d}Z"
        writer.writerow(["src", quote_plus(o.key, safe="/"), o.size, stamp, o.etag, "STANDARD"])
    assert text == expected.getvalue()


def test_a_listing_batch_of_another_shape_is_refused(store: FolderStore):
    with pytest.raises(ValueError, match="listing batch"):
        write(store, [listing_batch([info("a.jpg")]).drop_columns(["etag"])])
    assert store.writes == []
