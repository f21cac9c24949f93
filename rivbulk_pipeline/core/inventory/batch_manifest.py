"""Candidate images and the S3 Batch Operations manifest (`S3BatchOperations_CSV_20180820`).

Rows are `bucket,key[,versionId]`, no header, keys URL-encoded like `quote(key, safe='/')`
(a space is `%20`), and either every row carries a version or none does. Everything
here works on whole Arrow batches with pyarrow.compute: no Python loop per row.
"""

from __future__ import annotations

import functools
import os
from typing import IO, Optional

import pyarrow as pa
import pyarrow.compute as pc

from ..model import CANDIDATE_SCHEMA
from .keys import quote_array, string_buffers

MANIFEST_FORMAT = "S3BatchOperations_CSV_20180820"
IMAGE_KEY_RE = r"\.(png|jpe?g)$"  # matched case-insensitively: Rekognition takes JPEG and PNG

OTHER_BUCKET = "other_bucket"  # a row of another bucket than the image bucket: never read
NOT_AN_IMAGE = "not_an_image"
DELETE_MARKER = "delete_marker"
NOT_LATEST_VERSION = "not_latest_version"


def batch_manifest_spec(has_versions: bool) -> dict:
    """The s3control `Manifest.Spec` for a manifest written here."""
    fields = ["Bucket", "Key", "VersionId"] if has_versions else ["Bucket", "Key"]
    return {"Format": MANIFEST_FORMAT, "Fields": fields}


# ---------------------------------------------------------------- candidates


def _column(batch: pa.RecordBatch, name: str, typ: pa.DataType) -> pa.Array:
    index = batch.schema.get_field_index(name)
    return batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, typ)


def _conditions(batch: pa.RecordBatch, image_bucket: Optional[str]) -> tuple[pa.Array, ...]:
    """(another bucket, not an image, a delete marker, not the latest version), each never null."""
    bucket = _column(batch, "bucket", pa.string())
    if image_bucket is None:
        elsewhere = pa.array([False] * batch.num_rows)
    else:
        elsewhere = pc.fill_null(pc.not_equal(bucket, image_bucket), True)  # no bucket: not ours either
    image = pc.fill_null(
        pc.match_substring_regex(_column(batch, "key", pa.string()), IMAGE_KEY_RE, ignore_case=True), False
    )
    marker = pc.fill_null(_column(batch, "is_delete_marker", pa.bool_()), False)  # null: not a marker
    latest = pc.fill_null(_column(batch, "is_latest", pa.bool_()), True)  # null: a current-versions report
    return elsewhere, pc.invert(image), marker, pc.invert(latest)


def candidate_mask(batch: pa.RecordBatch, image_bucket: Optional[str] = None) -> pa.BooleanArray:
    """True for rows that are candidate images: in `image_bucket` (None: any bucket), a
    .png/.jpg/.jpeg key (any case), not a delete marker (null counts as not), the latest
    version (null counts as latest)."""
    excluded = functools.reduce(pc.or_, _conditions(batch, image_bucket))
    return pc.invert(excluded)


def exclusion_reasons(batch: pa.RecordBatch, image_bucket: Optional[str] = None) -> pa.StringArray:
    """Per row, why it is not a candidate (null for a candidate); the first rule broken wins,
    in the order other_bucket, not_an_image, delete_marker, not_latest_version."""
    reasons = pa.array([OTHER_BUCKET, NOT_AN_IMAGE, DELETE_MARKER, NOT_LATEST_VERSION])
    return pc.case_when(pc.make_struct(*_conditions(batch, image_bucket)), *reasons)


def select_candidates(batch: pa.RecordBatch, image_bucket: Optional[str] = None) -> pa.RecordBatch:
    """The candidate rows of an inventory batch, in CANDIDATE_SCHEMA."""
    kept = batch.filter(candidate_mask(batch, image_bucket))
    return pa.RecordBatch.from_arrays(
        [_column(kept, f.name, f.type).cast(f.type) for f in CANDIDATE_SCHEMA], schema=CANDIDATE_SCHEMA
    )


# ---------------------------------------------------------------- manifest rows


def _versions(batch: pa.RecordBatch) -> pa.Array:
    version = _column(batch, "version_id", pa.string()).cast(pa.string())
    return pc.if_else(pc.equal(version, ""), pa.scalar(None, pa.string()), version)  # '' is no version


def _has_versions(batch: pa.RecordBatch) -> bool:
    return batch.num_rows > 0 and _versions(batch).null_count < batch.num_rows


def _csv_field(values: pa.Array) -> pa.Array:
    """CSV-quote only the values that need it (a comma, a quote or a line break)."""
    needs = pc.match_substring_regex(values, r'[",\r\n]')
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(values, '"', '""'), '"', "")
    return pc.if_else(needs, quoted, values)


def encode_manifest_rows(batch: pa.RecordBatch, with_versions: Optional[bool] = None) -> bytes:
    """The manifest lines for a batch with columns bucket, key and (optionally) version_id.

    `with_versions` None: versions are written if any row has one, `null` for the others.
    True/False forces the choice (False drops versions). An empty batch gives b"".
    """
    if batch.num_rows == 0:
        return b""
    bucket = _column(batch, "bucket", pa.string()).cast(pa.string())
    key = _column(batch, "key", pa.string()).cast(pa.string())
    if bucket.null_count or key.null_count:
        raise ValueError("a batch manifest row needs a bucket and a key (found a null)")
    if with_versions is None:
        with_versions = _has_versions(batch)
    parts = [_csv_field(bucket), quote_array(key)]  # an encoded key never needs quoting
    if with_versions:
        parts.append(_csv_field(pc.fill_null(_versions(batch), "null")))
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*parts, ","), "", "\n")
    _, data = string_buffers(lines)  # the lines, back to back
    return data.tobytes()


class BatchManifestWriter:
    """Streams manifest rows to a local file, batch by batch.

    `has_versions` None decides from the rows: once any row carries a version, every row
    does (rows already written without one are rewritten with `null`, once). True/False
    forces the choice. A manifest of 0 rows is an empty file, which is valid.
    """

    def __init__(self, path: str, has_versions: Optional[bool] = None) -> None:
        self.path = path
        self.rows = 0
        self._forced = has_versions
        self._versions = bool(has_versions)
        self._file: Optional[IO[bytes]] = open(path, "wb")

    @property
    def has_versions(self) -> bool:
        return self._versions

    def write(self, batch: pa.RecordBatch) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: batch manifest already closed")
        if batch.num_rows == 0:
            return
        if self._forced is None and not self._versions and _has_versions(batch):
            self._add_null_versions()
            self._versions = True
        self._file.write(encode_manifest_rows(batch, with_versions=self._versions))
        self.rows += batch.num_rows

    def _add_null_versions(self) -> None:
        """Give every row written so far a `null` version (they are plain `bucket,key` lines)."""
        if self.rows == 0:
            return
        self._file.close()
        rewritten = self.path + ".versions"
        with open(self.path, "rb") as old, open(rewritten, "wb") as new:
            for line in old:
                new.write(line.rstrip(b"\n") + b",null\n")
        os.replace(rewritten, self.path)
        self._file = open(self.path, "ab")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "BatchManifestWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
