"""Benchmark data: an S3 Inventory CSV report as AWS delivers it, and image objects with tags.

Keys are generated from a row number, so any row's expected key is known without keeping
millions of them around. A third of the keys need decoding, in four flavours: a space
(written '+', the reference's bug), a literal '+' (%2B), a '%' (%25) and non-ASCII (%XX).
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator
from urllib.parse import quote_plus, unquote_plus

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from rivbulk_pipeline.core.inventory.reader import REPORT_FOLDER_FORMAT, report_root
from rivbulk_pipeline.core.model import CANDIDATE_SCHEMA
from rivbulk_pipeline.resources.object_store import LocalObjectStore

SOURCE_BUCKET = "bench-images"
FACES_BUCKET = "bench-faces"  # the image objects of measurements 2-4
INVENTORY_BUCKET = "bench-inventory"
INVENTORY_PREFIX = "inventories"
CONFIG_ID = "daily-all"
CREATED_AT = datetime(2026, 3, 1, 8, 15, tzinfo=timezone.utc)
_CHUNK_ROWS = 100_000
_CSV_OPTIONS = pcsv.WriteOptions(include_header=False, quoting_style="all_valid")

# A current-versions report with AWS's usual optional fields (FACTS.md's example, minus versions).
FILE_SCHEMA = (
    "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass, IsMultipartUploaded, ReplicationStatus, "
    "EncryptionStatus, ObjectLockRetainUntilDate, ObjectLockMode, ObjectLockLegalHoldStatus, "
    "IntelligentTieringAccessTier, BucketKeyStatus, ChecksumAlgorithm"
)

# The rows that need decoding: "users/<8 digits>" + one of these (digits never need encoding).
_ENCODED_SUFFIXES = (
    "/John Smith face.jpg",  # spaces only: '+' in the file and no '%' (the reference's bug)
    "/face+1.jpg",  # a literal '+': %2B
    "/100%_sure.png",  # a literal '%': %25
    "/visage élodie-ünal.jpeg",  # non-ASCII (and a space): %C3%A9 ...
)
_SUFFIXES = ("/face.jpg",) + _ENCODED_SUFFIXES
_ENCODED = tuple(quote_plus(s, safe="/") for s in _SUFFIXES)


def _flavour(i: int) -> int:
    """Index into _SUFFIXES: 0 (no encoding needed) for two rows in three."""
    return 0 if i % 3 else 1 + (i // 3) % len(_ENCODED_SUFFIXES)


def original_key(i: int) -> str:
    """The real (decoded) key of row `i`."""
    return f"users/{i:08d}{_SUFFIXES[_flavour(i)]}"


def encoded_key(i: int) -> str:
    """Row `i`'s key as S3 Inventory writes it in CSV (URL-encoded, space as '+')."""
    return quote_plus(original_key(i), safe="/")


@functools.lru_cache(maxsize=None)
def _hex_table(n: int, salt: str) -> pa.Array:
    """n distinct 16-hex-digit strings: two of them make an ETag-like value."""
    return pa.array([hashlib.md5(f"{salt}{k}".encode()).hexdigest()[:16] for k in range(n)])


def _csv_rows(start: int, stop: int) -> pa.RecordBatch:
    """Rows start..stop-1 as text columns, built vectorised (the same keys as encoded_key)."""
    i = np.arange(start, stop, dtype=np.int64)
    flavour = np.where(i % 3 != 0, 0, 1 + (i // 3) % len(_ENCODED_SUFFIXES))
    digits = pc.utf8_lpad(pa.array(i).cast(pa.string()), 8, "0")
    keys = pc.binary_join_element_wise("users/", digits, pa.array(_ENCODED).take(pa.array(flavour)), "")
    stamps = pa.array(np.datetime64("2026-02-27T00:00:00", "s") + (i * 7) % 86_400, pa.timestamp("s"))
    high, low = _hex_table(1 << 10, "high"), _hex_table(1 << 16, "low")
    etags = pc.binary_join_element_wise(high.take(pa.array((i >> 16) % len(high))), low.take(pa.array(i & 0xFFFF)), "")

    def const(value: str) -> pa.Array:
        return pa.repeat(pa.scalar(value, pa.string()), len(i))

    columns = [
        const(SOURCE_BUCKET),
        keys,
        pa.array(20_000 + i % 50_000).cast(pa.string()),
        pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%S.000Z"),
        etags,
        const("STANDARD"),
        const("false"),
        const(""),
        const("SSE-S3"),
        const(""),
        const(""),
        const(""),
        const(""),
        const("DISABLED"),
        const(""),
    ]
    return pa.RecordBatch.from_arrays(columns, names=[f"c{n}" for n in range(len(columns))])


@dataclass(frozen=True)
class InventoryReport:
    store_root: str
    bucket: str
    folder: str  # the report folder prefix (holds manifest.json and manifest.checksum)
    data_keys: tuple[str, ...]
    rows: int


def write_csv_report(store_root: str, rows: int, rows_per_file: int = 0) -> InventoryReport:
    """Write a `rows`-row CSV report into the local store at `store_root`.

    Data files go in as plain files (the local store accepts files copied in by hand), so
    generating millions of rows costs no per-object fsync; the manifest and its checksum
    go through the store, checksum last as AWS does. `rows_per_file` 0: one data file.
    """
    if rows < 1:
        raise ValueError("a benchmark report needs at least one row")
    store = LocalObjectStore(root=store_root)
    store.create_bucket(INVENTORY_BUCKET)
    root = report_root(INVENTORY_PREFIX, SOURCE_BUCKET, CONFIG_ID)
    per_file = rows_per_file or rows
    files, data_keys = [], []
    for start in range(0, rows, per_file):
        key = f"{root}/data/{uuid.uuid4()}.csv.gz"
        path = os.path.join(store_root, INVENTORY_BUCKET, *key.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
            stop = min(start + per_file, rows)
            for chunk in range(start, stop, _CHUNK_ROWS):
                # every field quoted and no header, as AWS writes it; empty optional fields are ""
                text = pa.BufferOutputStream()
                pcsv.write_csv(_csv_rows(chunk, min(chunk + _CHUNK_ROWS, stop)), text, _CSV_OPTIONS)
                out.write(text.getvalue())
            out.write(b"\n")  # reports may end with a blank line
        with open(path, "rb") as f:
            md5 = hashlib.file_digest(f, "md5").hexdigest()
        files.append({"key": key, "size": os.path.getsize(path), "MD5checksum": md5})
        data_keys.append(key)
    folder = f"{root}/{CREATED_AT.strftime(REPORT_FOLDER_FORMAT)}"
    manifest = {
        "sourceBucket": SOURCE_BUCKET,
        "destinationBucket": f"arn:aws:s3:::{INVENTORY_BUCKET}",
        "version": "2016-11-30",
        "creationTimestamp": str(int(CREATED_AT.timestamp() * 1000)),
        "fileFormat": "CSV",
        "fileSchema": FILE_SCHEMA,
        "files": files,
    }
    body = json.dumps(manifest, indent=2).encode("utf-8")
    store.put_bytes(INVENTORY_BUCKET, f"{folder}/manifest.json", body, "application/json")
    store.put_bytes(INVENTORY_BUCKET, f"{folder}/manifest.checksum", hashlib.md5(body).hexdigest().encode())
    return InventoryReport(store_root, INVENTORY_BUCKET, folder, tuple(data_keys), rows)


def truth_keys(report: InventoryReport) -> Iterator[str]:
    """Every key of the report decoded by the stdlib's `unquote_plus`, in file order: the truth."""
    for key in report.data_keys:
        path = os.path.join(report.store_root, report.bucket, *key.split("/"))
        with gzip.open(path, "rt", encoding="utf-8", newline="") as text:
            for row in csv.reader(text):
                if row:
                    yield unquote_plus(row[1])


# ---------------------------------------------------------------- image objects with tags


def make_image_objects(store: LocalObjectStore, bucket: str, start: int, count: int) -> list[str]:
    """`count` small objects `faces/<n>.jpg` tagged UserId=user-<n>; returns their keys.

    The bytes are written as plain files (no per-object fsync; the store takes files copied
    in by hand), the tags through the store. Qualification never reads the bytes.
    """
    store.create_bucket(bucket)
    keys = []
    for n in range(start, start + count):
        key = f"faces/{n // 1000:04d}/{n:08d}.jpg"
        path = os.path.join(store.root, bucket, *key.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 benchmark image %d" % n)
        store.put_tags(bucket, key, {"UserId": f"user-{n}"})
        keys.append(key)
    return keys


def candidate_batch(store: LocalObjectStore, bucket: str, keys: list[str]) -> pa.RecordBatch:
    """The objects as a batch_manifest table (CANDIDATE_SCHEMA). ETags are hashed here:
    listing would make the store cache each one in its own committed (fsynced) write."""
    rows = []
    for key in keys:
        with open(os.path.join(store.root, bucket, *key.split("/")), "rb") as f:
            body = f.read()
        rows.append(
            {
                "bucket": bucket,
                "key": key,
                "version_id": None,
                "size": len(body),
                "e_tag": hashlib.md5(body).hexdigest(),
            }
        )
    return pa.RecordBatch.from_pylist(rows, schema=CANDIDATE_SCHEMA)
