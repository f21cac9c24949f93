"""Reading S3 Inventory reports exactly as AWS writes them (see FACTS.md).

A report is a folder `<root>/YYYY-MM-DDTHH-MMZ/` holding `manifest.json` (which lists the
data files, anywhere in the destination bucket) and `manifest.checksum` (written last:
AWS's "report complete" signal). Data files are gzipped CSV, ORC or Parquet. Everything
is streamed: one data file spooled to local disk at a time, read batch by batch, and
normalised to `model.INVENTORY_SCHEMA` with keys decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.orc as porc
import pyarrow.parquet as pq

from ..errors import InventoryError, ObjectNotFound
from ..model import INVENTORY_SCHEMA
from ..ports import ObjectStore
from .keys import looks_url_encoded, unquote_plus_array

FILE_FORMATS = ("CSV", "ORC", "Parquet")
REPORT_FOLDER_FORMAT = "%Y-%m-%dT%H-%MZ"
_REPORT_FOLDER_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SPOOL_CHUNK = 1 << 20
_CSV_PREFETCH = 2  # parsed CSV blocks that may wait for the consumer: overlap, bounded memory


def canonical_column(name: str) -> str:
    """One spelling for a report column: 'LastModifiedDate' and 'last_modified_date' alike."""
    return name.replace("_", "").strip().lower()


# report column (canonical) -> INVENTORY_SCHEMA field
_TARGETS = {canonical_column(f.name): f for f in INVENTORY_SCHEMA}


@dataclass
class InventoryFile:
    key: str
    size: int
    md5: str  # hex, lower case


@dataclass
class InventoryManifest:
    source_bucket: str
    destination_bucket: str  # a bucket name (parsed from the ARN)
    version: str
    created_at: datetime  # UTC: when the scan began
    file_format: str  # 'CSV' | 'ORC' | 'Parquet'
    file_schema: list[str]  # column names as the manifest spells them
    files: list[InventoryFile] = field(default_factory=list)

    @property
    def inventory_date(self) -> date:
        return self.created_at.astimezone(timezone.utc).date()


# ---------------------------------------------------------------- manifest


def parse_file_schema(text: str) -> list[str]:
    """Column names from a manifest's fileSchema, in any of AWS's three spellings.

    CSV: "Bucket, Key, ..."; ORC: "struct<bucket:string,key:string,...>";
    Parquet: "message s3.inventory { required binary bucket (UTF8); ... }".
    """
    text = text.strip()
    orc = re.fullmatch(r"struct<(.*)>", text, re.S)
    if orc:
        return [part.split(":", 1)[0].strip() for part in orc.group(1).split(",") if part.strip()]
    parquet = re.fullmatch(r"message\s+[^{]*\{(.*)\}", text, re.S)
    if parquet:
        # each field: "<repetition> <type> <name> [(<annotation>)]"
        return [f.split()[2] for f in parquet.group(1).split(";") if len(f.split()) >= 3]
    return [part.strip() for part in text.split(",") if part.strip()]


def _bucket_from_arn(value: str) -> str:
    match = re.fullmatch(r"arn:[^:]+:s3:::(.+)", value)
    return match.group(1) if match else value


def parse_manifest(manifest_bytes: bytes, location: str, checksum_text: Optional[str]) -> InventoryManifest:
    """Parse (and, given `checksum_text`, verify) one manifest.json.

    Raises InventoryError(location, rule) on a checksum mismatch, bad JSON, a missing or
    mistyped field, an unknown fileFormat or a fileSchema without Bucket and Key.
    """
    if checksum_text is not None:
        tokens = checksum_text.split()
        actual = hashlib.md5(manifest_bytes).hexdigest()
        if not tokens:
            raise InventoryError(location, "manifest.checksum is empty")
        if tokens[0].lower() != actual:
            raise InventoryError(
                location, f"checksum mismatch: manifest.checksum says {tokens[0]}, manifest.json hashes to {actual}"
            )
    try:
        doc = json.loads(manifest_bytes)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InventoryError(location, f"manifest.json is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InventoryError(location, "manifest.json must hold a JSON object")

    def text(name: str) -> str:
        value = doc.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InventoryError(location, f"manifest field {name!r} is missing or not a non-empty string")
        return value.strip()

    fmt = {f.lower(): f for f in FILE_FORMATS}.get(text("fileFormat").lower())
    if fmt is None:
        raise InventoryError(location, f"unknown fileFormat {doc['fileFormat']!r} (expected CSV, ORC or Parquet)")
    schema = parse_file_schema(text("fileSchema"))
    present = {canonical_column(c) for c in schema}
    if not {"bucket", "key"} <= present:
        raise InventoryError(location, "fileSchema must include Bucket and Key")
    stamp = text("creationTimestamp")
    if not stamp.isdigit():
        raise InventoryError(location, "creationTimestamp must be epoch milliseconds")
    destination = _bucket_from_arn(text("destinationBucket"))
    files = doc.get("files")
    if not isinstance(files, list):
        raise InventoryError(location, "manifest field 'files' is missing or not a list")
    parsed = []
    for i, entry in enumerate(files):
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("key"), str)
            and entry["key"]
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("MD5checksum"), str)
            and entry["MD5checksum"]
        )
        if not ok:
            raise InventoryError(location, f"files[{i}] needs a key, an integer size and an MD5checksum")
        parsed.append(InventoryFile(entry["key"], entry["size"], entry["MD5checksum"].strip().lower()))
    return InventoryManifest(
        source_bucket=text("sourceBucket"),
        destination_bucket=destination,
        version=text("version"),
        created_at=_EPOCH + timedelta(milliseconds=int(stamp)),
        file_format=fmt,
        file_schema=schema,
        files=parsed,
    )


# ---------------------------------------------------------------- discovery


def report_root(prefix: str, source_bucket: str, config_id: str) -> str:
    """`<prefix>/<source-bucket>/<config-id>` (no leading or trailing slash; prefix optional)."""
    return "/".join(part for part in (prefix.strip("/"), source_bucket, config_id) if part)


def parse_report_folder(name: str) -> Optional[datetime]:
    """The UTC time of a report folder `YYYY-MM-DDTHH-MMZ`, or None for anything else.

    Accepts the bare name or a listed prefix ending in it (`.../2026-11-20T08-15Z/`).
    """
    last = name.rstrip("/").rsplit("/", 1)[-1]
    if not _REPORT_FOLDER_RE.fullmatch(last):
        return None
    try:
        return datetime.strptime(last, REPORT_FOLDER_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:  # e.g. month 13
        return None


def load_manifest(store: ObjectStore, bucket: str, folder_prefix: str) -> InventoryManifest:
    """Read and verify `<folder_prefix>/manifest.json` against its manifest.checksum.

    A folder without manifest.checksum is a report AWS has not finished delivering.
    """
    folder = folder_prefix.rstrip("/")
    try:
        checksum = store.get_bytes(bucket, f"{folder}/manifest.checksum")
    except ObjectNotFound:
        raise InventoryError(f"s3://{bucket}/{folder}/", "report incomplete: no manifest.checksum") from None
    location = f"s3://{bucket}/{folder}/manifest.json"
    try:
        manifest = store.get_bytes(bucket, f"{folder}/manifest.json")
    except ObjectNotFound:
        raise InventoryError(location, "report incomplete: no manifest.json") from None
    return parse_manifest(manifest, location, checksum.decode("ascii", errors="replace"))


# ---------------------------------------------------------------- data files


@contextlib.contextmanager
def _spooled(store: ObjectStore, bucket: str, entry: InventoryFile, location: str, spool_dir: Optional[str]):
    """A verified local copy of one data file: MD5 checked before anyone reads a row."""
    fd, path = tempfile.mkstemp(prefix="rivbulk-inventory-", dir=spool_dir)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                with store.open_read(bucket, entry.key) as src:
                    while chunk := src.read(_SPOOL_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except ObjectNotFound:
                raise InventoryError(location, "data file listed in the manifest is missing") from None
        if digest.hexdigest() != entry.md5:
            raise InventoryError(
                location, f"MD5 mismatch: manifest says {entry.md5}, the file hashes to {digest.hexdigest()}"
            )
        yield path
    finally:
        os.unlink(path)


def iter_inventory_batches(
    store: ObjectStore,
    manifest: InventoryManifest,
    batch_rows: int = 65536,
    columnar_keys_url_encoded: Optional[bool] = None,
    spool_dir: Optional[str] = None,
) -> Iterator[pa.RecordBatch]:
    """Every row of the report as batches of at most `batch_rows` rows in INVENTORY_SCHEMA.

    Data files are read from `manifest.files[].key` in the destination bucket, one at a
    time: each is spooled to a temp file (in `spool_dir`) while its MD5 is computed, and
    no row of it is yielded unless the MD5 matches the manifest. Absent optional columns
    come out null, and so does an empty VersionId. CSV keys are URL-decoded like
    `unquote_plus`.

    Whether ORC/Parquet keys are URL-encoded is unconfirmed. `columnar_keys_url_encoded`
    True decodes them like CSV keys, False keeps them as they are; None decides per
    file: the keys are decoded only if *no* key of the file holds a character URL
    encoding never produces (a space, a non-ASCII character, a '%' not followed by two
    hex digits) *and* at least one key holds a %XX escape. (That costs one extra pass
    over the file's key column.)

    Raises InventoryError naming the data file for a missing file, an MD5 mismatch, a
    corrupt file, a row with the wrong number of fields or an unparseable value.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    readers: dict[str, Callable[..., Iterator[pa.RecordBatch]]] = {
        "CSV": _read_csv,
        "ORC": _read_orc,
        "Parquet": _read_parquet,
    }
    read = readers[manifest.file_format]
    for entry in manifest.files:
        location = f"s3://{manifest.destination_bucket}/{entry.key}"
        with _spooled(store, manifest.destination_bucket, entry, location, spool_dir) as path:
            try:
                yield from read(path, manifest, location, batch_rows, columnar_keys_url_encoded)
            except InventoryError:
                raise
            except (pa.ArrowException, OSError, EOFError) as exc:
                raise InventoryError(
                    location, f"corrupt {manifest.file_format} data file ({_safe_reason(exc)})"
                ) from None


def _safe_reason(exc: BaseException) -> str:
    """The library's reason, minus any echo of row contents (keys may be personal)."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    counts = re.search(r"Expected (\d+) columns, got (\d+)", message)
    if counts:
        return f"a row has {counts.group(2)} fields, the fileSchema has {counts.group(1)}"
    return message.split(": ", 1)[0][:200] if "CSV parse error" in message else message[:200]


def _slices(batch: pa.RecordBatch, rows: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


def _read_csv(
    path: str, manifest: InventoryManifest, location: str, batch_rows: int, _: Any
) -> Iterator[pa.RecordBatch]:
    names = manifest.file_schema
    wanted = [n for n in names if canonical_column(n) in _TARGETS]
    convert = pcsv.ConvertOptions(
        column_types={n: pa.string() for n in wanted},
        include_columns=wanted,
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    with pa.OSFile(path) as raw, pa.CompressedInputStream(raw, "gzip") as stream:
        try:
            reader = pcsv.open_csv(stream, read_options=pcsv.ReadOptions(column_names=names), convert_options=convert)
        except pa.ArrowInvalid as exc:
            if str(exc) == "Empty CSV file":  # a report of an empty bucket
                return
            raise
        row = 0
        # closing(): the parsing thread is joined before the stream under it is closed
        with contextlib.closing(_prefetched(reader)) as blocks:
            for batch in blocks:
                for piece in _slices(batch, batch_rows):
                    columns = {canonical_column(n): piece.column(n) for n in piece.schema.names}
                    yield _normalise(columns, location, row, decode_keys=True)
                    row += piece.num_rows


_END = object()


def _prefetched(reader: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """`reader`'s batches, the next ones parsed in a background thread meanwhile.

    Arrow parses with the GIL released, so parsing block n+1 overlaps normalising
    block n. At most `_CSV_PREFETCH` parsed blocks wait in the queue. An exception
    from the reader is re-raised here, in the caller's thread. However the caller
    stops (end, error, generator closed early), the thread is stopped and joined.
    """
    ready: queue.Queue = queue.Queue(maxsize=_CSV_PREFETCH)
    stop = threading.Event()

    def parse() -> None:
        try:
            for batch in reader:
                if stop.is_set():
                    return
                ready.put(batch)
            ready.put(_END)
        except BaseException as exc:  # handed to the caller, who decides
            ready.put(exc)

    thread = threading.Thread(target=parse, name="rivbulk-csv-parse", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # empty the queue so a blocked put() returns and sees `stop`
            with contextlib.suppress(queue.Empty):
                while True:
                    ready.get_nowait()
            thread.join(timeout=0.05)


def _read_parquet(
    path: str, manifest: InventoryManifest, location: str, batch_rows: int, encoded: Optional[bool]
) -> Iterator[pa.RecordBatch]:
    with pq.ParquetFile(path, pre_buffer=False) as source:  # a local copy: see steps.tables.open_table

        def batches(columns: list[str]) -> Iterator[pa.RecordBatch]:
            return source.iter_batches(batch_size=batch_rows, columns=columns)

        yield from _read_columnar(source.schema_arrow, batches, location, encoded)


def _read_orc(
    path: str, manifest: InventoryManifest, location: str, batch_rows: int, encoded: Optional[bool]
) -> Iterator[pa.RecordBatch]:
    with open(path, "rb") as handle:
        source = porc.ORCFile(handle)

        def batches(columns: list[str]) -> Iterator[pa.RecordBatch]:
            for stripe in range(source.nstripes):  # a stripe is ORC's unit of reading
                yield from _slices(source.read_stripe(stripe, columns=columns), batch_rows)

        yield from _read_columnar(source.schema, batches, location, encoded)


def _read_columnar(
    schema: pa.Schema,
    batches: Callable[[list[str]], Iterator[pa.RecordBatch]],
    location: str,
    encoded: Optional[bool],
) -> Iterator[pa.RecordBatch]:
    by_canon = {canonical_column(n): n for n in schema.names if canonical_column(n) in _TARGETS}
    for required in ("bucket", "key"):
        if required not in by_canon:
            raise InventoryError(location, f"data file has no {required} column")
    if encoded is None:
        encoded = _keys_look_encoded(b.column(0) for b in batches([by_canon["key"]]))
    row = 0
    for batch in batches(list(by_canon.values())):
        columns = {canon: batch.column(name) for canon, name in by_canon.items()}
        yield _normalise(columns, location, row, decode_keys=encoded)
        row += batch.num_rows


def _keys_look_encoded(key_arrays: Iterator[pa.Array]) -> bool:
    escaped = False
    for keys in key_arrays:
        foreign, has_escape = looks_url_encoded(keys)
        if foreign:
            return False
        escaped = escaped or has_escape
    return escaped


# ---------------------------------------------------------------- normalisation


def _normalise(columns: dict[str, pa.Array], location: str, row_base: int, decode_keys: bool) -> pa.RecordBatch:
    """One batch in INVENTORY_SCHEMA from the columns present (keyed by canonical name)."""
    num_rows = len(next(iter(columns.values())))
    arrays = []
    for canon, target in _TARGETS.items():
        column = columns.get(canon)
        if column is None:
            arrays.append(pa.nulls(num_rows, target.type))
            continue
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = column.cast(pa.string())
            if canon == "key":
                arrays.append(unquote_plus_array(column) if decode_keys else column)
                continue
            if canon != "bucket":
                column = pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)
            arrays.append(_from_text(column, target, location, row_base))
        else:
            try:
                arrays.append(pc.cast(column, options=pc.CastOptions(target.type, allow_time_truncate=True)))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise InventoryError(
                    location, f"column {target.name} has type {column.type}, expected {target.type}"
                ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=INVENTORY_SCHEMA)


def _from_text(column: pa.Array, target: pa.Field, location: str, row_base: int) -> pa.Array:
    """A text column (empty already null) converted to the target type, vectorised."""
    if pa.types.is_string(target.type):
        return pc.utf8_trim(column, '"') if target.name == "e_tag" else column
    if pa.types.is_boolean(target.type):
        lowered = pc.utf8_lower(column)
        is_true = pc.equal(lowered, "true")
        bad = pc.and_(pc.not_equal(lowered, "false"), pc.invert(is_true))
        if pc.any(bad).as_py():
            _raise_bad_row(location, row_base, bad, f"{target.name} is not true/false")
        return is_true
    if pa.types.is_integer(target.type):
        try:
            return column.cast(target.type)
        except pa.ArrowInvalid:
            bad = pc.invert(pc.match_substring_regex(column, r"^[0-9]{1,18}$"))
            _raise_bad_row(location, row_base, bad, f"{target.name} is not a whole number")
    if pa.types.is_timestamp(target.type):
        return _parse_timestamps(column, target, location, row_base)
    raise AssertionError(f"no text conversion for {target}")  # INVENTORY_SCHEMA changed


def _parse_timestamps(column: pa.Array, target: pa.Field, location: str, row_base: int) -> pa.Array:
    """ISO-8601 text as UTC timestamps; text without a zone is taken to be UTC."""
    options = pc.CastOptions(target.type, allow_time_truncate=True)
    for parsed_type in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):  # AWS writes '...000Z'
        try:
            return pc.cast(column.cast(parsed_type), options=options)
        except pa.ArrowInvalid:
            pass

    def parses(value: pa.Array) -> bool:
        for parsed_type in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
            try:
                value.cast(parsed_type)
                return True
            except pa.ArrowInvalid:
                pass
        return False

    # the error path: find the first offending row, one at a time
    valid = column.is_valid().to_pylist()
    bad = pa.array([valid[i] and not parses(column.slice(i, 1)) for i in range(len(column))], pa.bool_())
    _raise_bad_row(location, row_base, bad, f"{target.name} is not an ISO-8601 timestamp (or mixes zoned and unzoned)")


def _raise_bad_row(location: str, row_base: int, bad: pa.Array, rule: str) -> None:
    index = pc.index(pc.fill_null(bad, False), True).as_py()
    where = f"row {row_base + index + 1}" if index >= 0 else f"a row after row {row_base}"
    raise InventoryError(location, f"{where}: {rule}")
