"""Writing an S3 Inventory report, laid out as AWS delivers one, for any ObjectStore.

A bucket without an inventory configuration (the local store, a bucket we may not
configure) can then be listed and read the same way as an AWS-delivered report.
Data files are streamed: each is spooled to a local temp file, then uploaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Optional
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.orc as porc
import pyarrow.parquet as pq

from ..model import ObjectInfo
from ..ports import ObjectStore
from .reader import FILE_FORMATS, REPORT_FOLDER_FORMAT, InventoryFile, report_root

MANIFEST_VERSION = "2016-11-30"
_CHUNK_ROWS = 8192
_MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True)
class _Column:
    csv_name: str
    name: str  # snake_case: the ORC/Parquet column
    type: pa.DataType
    orc_type: str
    parquet_decl: str
    versioned_only: bool = False


_COLUMNS = (
    _Column("Bucket", "bucket", pa.string(), "string", "required binary bucket (UTF8)"),
    _Column("Key", "key", pa.string(), "string", "required binary key (UTF8)"),
    _Column("VersionId", "version_id", pa.string(), "string", "optional binary version_id (UTF8)", True),
    _Column("IsLatest", "is_latest", pa.bool_(), "boolean", "optional boolean is_latest", True),
    _Column("IsDeleteMarker", "is_delete_marker", pa.bool_(), "boolean", "optional boolean is_delete_marker", True),
    _Column("Size", "size", pa.int64(), "bigint", "optional int64 size"),
    _Column(
        "LastModifiedDate",
        "last_modified_date",
        pa.timestamp("ms", tz="UTC"),
        "timestamp",
        "optional int64 last_modified_date (TIMESTAMP_MILLIS)",
    ),
    _Column("ETag", "e_tag", pa.string(), "string", "optional binary e_tag (UTF8)"),
    _Column("StorageClass", "storage_class", pa.string(), "string", "optional binary storage_class (UTF8)"),
)
_SUFFIX = {"CSV": ".csv.gz", "ORC": ".orc", "Parquet": ".parquet"}


def file_schema_text(file_format: str, include_versions: bool) -> str:
    """The manifest's fileSchema, spelt the way AWS spells it for each format."""
    columns = [c for c in _COLUMNS if include_versions or not c.versioned_only]
    if file_format == "CSV":
        return ", ".join(c.csv_name for c in columns)
    if file_format == "ORC":
        return "struct<" + ",".join(f"{c.name}:{c.orc_type}" for c in columns) + ">"
    return "message s3.inventory { " + " ".join(c.parquet_decl + ";" for c in columns) + " }"


class _DataFileWriter:
    """One data file being written to a local temp file in the report's format."""

    def __init__(self, file_format: str, schema: pa.Schema, spool_dir: Optional[str]) -> None:
        fd, self.path = tempfile.mkstemp(prefix="rivbulk-inventory-", suffix=_SUFFIX[file_format], dir=spool_dir)
        os.close(fd)
        self.format = file_format
        self.rows = 0
        if file_format == "CSV":
            self._sink = pa.CompressedOutputStream(self.path, "gzip")
            text_schema = pa.schema([(f.name, pa.string()) for f in schema])
            # AWS quotes every field, and writes no header
            options = pcsv.WriteOptions(include_header=False, quoting_style="all_valid")
            self._writer = pcsv.CSVWriter(self._sink, text_schema, write_options=options)
        elif file_format == "ORC":
            self._writer = porc.ORCWriter(self.path, compression="zlib")
        else:
            self._writer = pq.ParquetWriter(self.path, _columnar_schema(schema), compression="snappy")

    def write(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        if self.format == "CSV":
            self._writer.write_batch(_as_csv_text(batch))
        elif self.format == "ORC":
            self._writer.write(pa.Table.from_batches([_as_columnar(batch)]))
        else:
            self._writer.write_batch(_as_columnar(batch))

    def close(self) -> None:
        self._writer.close()
        if self.format == "CSV":
            self._sink.close()


def _columnar_schema(schema: pa.Schema) -> pa.Schema:
    # ORC/Parquet inventories carry timestamps without a zone; they are UTC
    return pa.schema([(f.name, pa.timestamp("ms") if pa.types.is_timestamp(f.type) else f.type) for f in schema])


def _as_columnar(batch: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [col.cast(f.type) for col, f in zip(batch.columns, _columnar_schema(batch.schema))],
        schema=_columnar_schema(batch.schema),
    )


def _as_csv_text(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Every column as text the way AWS writes it: true/false, '...T08:15:00.000Z', empty for null."""
    columns = []
    for col in batch.columns:
        if pa.types.is_timestamp(col.type):
            col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ")  # %S carries the milliseconds
        columns.append(pc.fill_null(col.cast(pa.string()), ""))
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _row(obj: ObjectInfo, include_versions: bool, encode_key: bool) -> list:
    key = quote_plus(obj.key, safe="/") if encode_key else obj.key
    marker = include_versions and obj.is_delete_marker
    row: list = [obj.bucket, key]
    if include_versions:
        row += [obj.version_id or "", obj.is_latest, obj.is_delete_marker]
    # a delete marker has no size, ETag or storage class
    row += [
        None if marker else obj.size,
        obj.last_modified,
        None if marker else obj.etag,
        None if marker else obj.storage_class,
    ]
    return row


def write_inventory_report(
    store: ObjectStore,
    objects: Iterable[ObjectInfo],
    *,
    source_bucket: str,
    destination_bucket: str,
    destination_prefix: str,
    config_id: str,
    created_at: datetime,
    file_format: str = "CSV",
    rows_per_file: int = 1_000_000,
    include_versions: bool = False,
    columnar_keys_url_encoded: bool = False,
    spool_dir: Optional[str] = None,
) -> str:
    """Write a complete inventory report of `objects` and return its manifest.json key.

    Layout under `<prefix>/<source_bucket>/<config_id>/`: `data/<uuid>.csv.gz|.orc|.parquet`
    (at most `rows_per_file` rows each), then `<YYYY-MM-DDTHH-MMZ>/manifest.json`, then
    `hive/dt=<YYYY-MM-DD-HH-MM>/symlink.txt`, then `manifest.checksum` last, as AWS does.
    Without `include_versions` only current versions that are not delete markers are
    listed. CSV keys are URL-encoded like `quote_plus(key, safe='/')`; ORC/Parquet keys
    are written as they are unless `columnar_keys_url_encoded`.
    """
    fmt = {f.lower(): f for f in FILE_FORMATS}.get(file_format.lower())
    if fmt is None:
        raise ValueError(f"file_format must be one of {', '.join(FILE_FORMATS)}, not {file_format!r}")
    if created_at.tzinfo is None:
        raise ValueError("created_at must be timezone-aware (UTC)")
    if rows_per_file < 1:
        raise ValueError("rows_per_file must be at least 1")
    created_at = created_at.astimezone(timezone.utc)
    root = report_root(destination_prefix, source_bucket, config_id)
    columns = [c for c in _COLUMNS if include_versions or not c.versioned_only]
    schema = pa.schema([(c.name, c.type) for c in columns])
    encode_key = fmt == "CSV" or columnar_keys_url_encoded

    files: list[InventoryFile] = []
    current: Optional[_DataFileWriter] = None
    pending: list[list] = []

    def flush() -> None:
        nonlocal current, pending
        if not pending:
            return
        if current is None:
            current = _DataFileWriter(fmt, schema, spool_dir)
        values = zip(*pending)  # rows -> columns
        current.write(pa.RecordBatch.from_arrays([pa.array(v, c.type) for v, c in zip(values, columns)], schema=schema))
        pending = []
        if current.rows >= rows_per_file:
            finish()

    def finish() -> None:
        nonlocal current
        if current is None:
            return
        try:
            current.close()
            files.append(_upload(store, destination_bucket, f"{root}/data/{uuid.uuid4()}{_SUFFIX[fmt]}", current.path))
        finally:
            os.unlink(current.path)
            current = None

    try:
        for obj in objects:
            if not include_versions and (obj.is_delete_marker or not obj.is_latest):
                continue
            pending.append(_row(obj, include_versions, encode_key))
            rows_in_file = (current.rows if current else 0) + len(pending)
            if len(pending) >= _CHUNK_ROWS or rows_in_file >= rows_per_file:
                flush()
        flush()
        finish()
    finally:
        if current is not None:  # an error mid-file: drop the spool
            current.close()
            os.unlink(current.path)

    folder = f"{root}/{created_at.strftime(REPORT_FOLDER_FORMAT)}"
    millis = (created_at - datetime(1970, 1, 1, tzinfo=timezone.utc)) // _MILLISECOND
    manifest = {
        "sourceBucket": source_bucket,
        "destinationBucket": f"arn:aws:s3:::{destination_bucket}",
        "version": MANIFEST_VERSION,
        "creationTimestamp": str(millis),
        "fileFormat": fmt,
        "fileSchema": file_schema_text(fmt, include_versions),
        "files": [{"key": f.key, "size": f.size, "MD5checksum": f.md5} for f in files],
    }
    manifest_bytes = json.dumps(manifest, indent=2).encode("utf-8")
    manifest_key = f"{folder}/manifest.json"
    store.put_bytes(destination_bucket, manifest_key, manifest_bytes, content_type="application/json")
    symlink = "".join(f"s3://{destination_bucket}/{f.key}\n" for f in files)
    hive_key = f"{root}/hive/dt={created_at.strftime('%Y-%m-%d-%H-%M')}/symlink.txt"
    store.put_bytes(destination_bucket, hive_key, symlink.encode("utf-8"), content_type="text/plain")
    # last: its arrival says the report is complete
    checksum = hashlib.md5(manifest_bytes).hexdigest().encode("ascii")
    store.put_bytes(destination_bucket, f"{folder}/manifest.checksum", checksum, content_type="text/plain")
    return manifest_key


def _upload(store: ObjectStore, bucket: str, key: str, path: str) -> InventoryFile:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    store.upload_file(bucket, key, path)
    return InventoryFile(key=key, size=os.path.getsize(path), md5=digest.hexdigest())
