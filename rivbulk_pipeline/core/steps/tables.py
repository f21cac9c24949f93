"""Asset tables as Parquet in an object store, written and read batch by batch."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from ..ports import ObjectStore
from .memory import release_memory

BATCH_ROWS = 65_536  # rows per batch read back from a stored table: bounds memory


@dataclass(frozen=True)
class TableLocation:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class WrittenTable:
    location: TableLocation
    rows: int
    bytes: int


def table_location(bucket: str, prefix: str, asset: str, partition: Optional[str]) -> TableLocation:
    """Where an asset's table lives: <prefix>/<asset>/dt=<partition>/<asset>.parquet for one
    partition, <prefix>/<asset>/<asset>.parquet for an unpartitioned asset (partition None)."""
    folder = f"dt={partition}" if partition is not None else ""
    parts = [p for p in (prefix.strip("/"), asset, folder, f"{asset}.parquet") if p]
    return TableLocation(bucket, "/".join(parts))


def write_table(
    store: ObjectStore, location: TableLocation, schema: pa.Schema, batches: Iterable[pa.RecordBatch]
) -> WrittenTable:
    """Stream batches into a Parquet file (spooled locally), then upload it in one object write."""
    rows = 0
    with tempfile.TemporaryDirectory(prefix="rivbulk-table-") as folder:
        path = os.path.join(folder, "table.parquet")
        with pq.ParquetWriter(path, schema, compression="zstd") as writer:
            for batch in released_batches(batches):
                if batch.num_rows:
                    writer.write_batch(batch.cast(schema) if batch.schema != schema else batch)
                    rows += batch.num_rows
        store.upload_file(location.bucket, location.key, path)
        written = WrittenTable(location, rows, os.path.getsize(path))
    release_memory(collect=True)  # the step's streams and worker threads are done: a full release
    return written


def released_batches(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Pass batches through, releasing freed memory after each (`release_memory`)."""
    for batch in batches:
        yield batch
        release_memory()


@contextmanager
def local_copy(store: ObjectStore, bucket: str, key: str, suffix: str = "") -> Iterator[str]:
    """Spool an object to a temporary file (for formats that need random access)."""
    with tempfile.TemporaryDirectory(prefix="rivbulk-read-") as folder:
        path = os.path.join(folder, "object" + suffix)
        with store.open_read(bucket, key) as source, open(path, "wb") as target:
            shutil.copyfileobj(source, target, 1024 * 1024)
        yield path


@contextmanager
def open_table(store: ObjectStore, location: TableLocation) -> Iterator[pq.ParquetFile]:
    """A stored table, fetched once, to count and read batch by batch (`iter_batches`)."""
    with local_copy(store, location.bucket, location.key, ".parquet") as path:
        # A local file: pre-buffering (for remote reads) only held on to what it read, 60 MB more
        # resident after reading a 10M-row table.
        yield pq.ParquetFile(path, pre_buffer=False)
