"""Candidate selection and the S3BatchOperations_CSV_20180820 manifest."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Optional
from urllib.parse import quote, quote_plus, unquote

import hypothesis
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import strategies as st

from rivbulk_pipeline.core.inventory.batch_manifest import (
    BatchManifestWriter,
    batch_manifest_spec,
    candidate_mask,
    encode_manifest_rows,
    exclusion_reasons,
    select_candidates,
)
from rivbulk_pipeline.core.inventory.keys import quote_array
from rivbulk_pipeline.core.model import CANDIDATE_SCHEMA, INVENTORY_SCHEMA


def refs(keys: list[str], versions: Optional[list[Optional[str]]] = None, bucket: str = "photos") -> pa.RecordBatch:
    columns = {"bucket": [bucket] * len(keys), "key": keys}
    if versions is not None:
        columns["version_id"] = pa.array(versions, pa.string())
    return pa.record_batch(columns)


def parse(manifest: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(manifest.decode("utf-8"))))


# ---------------------------------------------------------------- manifest rows


def test_rows_without_versions():
    data = encode_manifest_rows(refs(["a.jpg", "dir/my photo.png", "x+y.jpeg"]))
    assert data == b"photos,a.jpg\nphotos,dir/my%20photo.png\nphotos,x%2By.jpeg\n"


def test_rows_with_versions_put_null_on_rows_without_one():
    data = encode_manifest_rows(refs(["a.jpg", "b.jpg", "c.jpg"], ["v1", None, ""]))
    assert data == b"photos,a.jpg,v1\nphotos,b.jpg,null\nphotos,c.jpg,null\n"


def test_a_version_column_of_nulls_means_no_versions():
    assert encode_manifest_rows(refs(["a.jpg"], [None])) == b"photos,a.jpg\n"


def test_forcing_the_version_choice():
    assert encode_manifest_rows(refs(["a.jpg"], [None]), with_versions=True) == b"photos,a.jpg,null\n"
    assert encode_manifest_rows(refs(["a.jpg"], ["v1"]), with_versions=False) == b"photos,a.jpg\n"


def test_fields_are_csv_quoted_only_when_needed():
    data = encode_manifest_rows(refs(['a,b "c".jpg'], ['v,"1"']))
    assert data == b'photos,a%2Cb%20%22c%22.jpg,"v,""1"""\n'
    assert parse(data) == [["photos", "a%2Cb%20%22c%22.jpg", 'v,"1"']]


def test_keys_round_trip_through_unquote():
    keys = ["élève 😀/写真.JPG", "100% sure+.png", "a/b/c.jpeg", "new\nline.jpg", "~_.-!*'().jpg"]
    rows = parse(encode_manifest_rows(refs(keys, ["v"] * len(keys))))
    assert [unquote(r[1]) for r in rows] == keys
    assert all(len(r) == 3 for r in rows)


def test_empty_batch_gives_no_bytes():
    assert encode_manifest_rows(refs([])) == b""


def test_null_key_is_refused():
    with pytest.raises(ValueError, match="bucket and a key"):
        encode_manifest_rows(pa.record_batch({"bucket": ["b"], "key": pa.array([None], pa.string())}))


def test_spec():
    assert batch_manifest_spec(False) == {"Format": "S3BatchOperations_CSV_20180820", "Fields": ["Bucket", "Key"]}
    assert batch_manifest_spec(True)["Fields"] == ["Bucket", "Key", "VersionId"]


QUOTE_PIECES = [
    "a",
    "Z",
    "0",
    "/",
    " ",
    "+",
    "%",
    "~",
    "_",
    ".",
    "-",
    ",",
    '"',
    "é",
    "😀",
    "写",
    "\n",
    "\u0000",
    "?",
    "#",
]


@pytest.mark.parametrize("space_as_plus, reference", [(False, quote), (True, quote_plus)])
def test_quote_array_matches_the_stdlib_on_random_keys(space_as_plus, reference):
    rnd = random.Random(20180820)
    for _ in range(300):
        keys = ["".join(rnd.choice(QUOTE_PIECES) for _ in range(rnd.randint(0, 10))) for _ in range(rnd.randint(0, 25))]
        keys += [None] if rnd.random() < 0.2 else []
        rnd.shuffle(keys)
        arr = pa.array(keys, pa.string())
        expected = [None if k is None else reference(k, safe="/") for k in keys]
        assert quote_array(arr, space_as_plus).to_pylist() == expected
        if len(arr) > 2:
            assert quote_array(arr.slice(2), space_as_plus).to_pylist() == expected[2:]


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(st.text(st.characters(codec="utf-8"), max_size=12), max_size=20))
def test_quote_array_property(keys: list[str]):
    assert quote_array(pa.array(keys, pa.string())).to_pylist() == [quote(k, safe="/") for k in keys]
    assert quote_array(pa.array(keys, pa.string()), space_as_plus=True).to_pylist() == [
        quote_plus(k, safe="/") for k in keys
    ]


# ---------------------------------------------------------------- the writer


def test_writer_streams_batches(tmp_path: Path):
    path = tmp_path / "manifest.csv"
    with BatchManifestWriter(str(path)) as writer:
        writer.write(refs(["a.jpg", "b c.jpg"]))
        writer.write(refs([]))
        writer.write(refs(["d.png"]))
    assert writer.rows == 3
    assert writer.has_versions is False
    assert path.read_bytes() == b"photos,a.jpg\nphotos,b%20c.jpg\nphotos,d.png\n"


def test_writer_keeps_every_row_versioned_once_a_version_appears(tmp_path: Path):
    path = tmp_path / "manifest.csv"
    with BatchManifestWriter(str(path)) as writer:
        writer.write(refs(["a.jpg", "b.jpg"], [None, None]))
        writer.write(refs(["c.jpg"], ["v3"]))
        writer.write(refs(["d.jpg"]))  # no version column at all
    assert writer.has_versions is True
    assert writer.rows == 4
    rows = parse(path.read_bytes())
    assert rows == [
        ["photos", "a.jpg", "null"],
        ["photos", "b.jpg", "null"],
        ["photos", "c.jpg", "v3"],
        ["photos", "d.jpg", "null"],
    ]
    assert not (tmp_path / "manifest.csv.versions").exists()


def test_writer_with_a_forced_choice(tmp_path: Path):
    with BatchManifestWriter(str(tmp_path / "v.csv"), has_versions=True) as writer:
        writer.write(refs(["a.jpg"]))
    assert writer.has_versions and (tmp_path / "v.csv").read_bytes() == b"photos,a.jpg,null\n"
    with BatchManifestWriter(str(tmp_path / "n.csv"), has_versions=False) as writer:
        writer.write(refs(["a.jpg"], ["v1"]))
    assert not writer.has_versions and (tmp_path / "n.csv").read_bytes() == b"photos,a.jpg\n"


def test_empty_manifest_is_an_empty_file(tmp_path: Path):
    path = tmp_path / "empty.csv"
    with BatchManifestWriter(str(path)) as writer:
        pass
    assert path.exists() and path.read_bytes() == b""
    assert writer.rows == 0 and writer.has_versions is False


def test_writing_after_close_is_an_error(tmp_path: Path):
    writer = BatchManifestWriter(str(tmp_path / "m.csv"))
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(refs(["a.jpg"]))


# ---------------------------------------------------------------- candidates


def inventory_batch(rows: list[tuple]) -> pa.RecordBatch:
    """(key, is_latest, is_delete_marker) rows in INVENTORY_SCHEMA."""
    n = len(rows)
    return pa.RecordBatch.from_pydict(
        {
            "bucket": ["photos"] * n,
            "key": [r[0] for r in rows],
            "version_id": [f"v{i}" for i in range(n)],
            "is_latest": [r[1] for r in rows],
            "is_delete_marker": [r[2] for r in rows],
            "size": list(range(n)),
            "last_modified_date": [None] * n,
            "e_tag": ["e"] * n,
            "storage_class": ["STANDARD"] * n,
        },
        schema=INVENTORY_SCHEMA,
    )


CASES = [
    # key, is_latest, is_delete_marker, reason (None: a candidate)
    ("a.jpg", None, None, None),
    ("b.JPG", True, False, None),
    ("c.jpeg", None, None, None),
    ("d.Jpeg", None, None, None),
    ("e.png", None, None, None),
    ("dir/f.PNG", True, None, None),
    ("g.gif", None, None, "not_an_image"),
    ("h.png.txt", None, None, "not_an_image"),
    ("ijpg", None, None, "not_an_image"),
    ("dir.jpg/", None, None, "not_an_image"),
    (None, None, None, "not_an_image"),
    ("j.jpg", True, True, "delete_marker"),
    ("k.txt", True, True, "not_an_image"),  # the first rule broken wins
    ("l.jpg", False, None, "not_latest_version"),
    ("m.jpg", False, True, "delete_marker"),
]


def test_candidate_mask_and_reasons_agree():
    batch = inventory_batch([c[:3] for c in CASES])
    mask = candidate_mask(batch)
    reasons = exclusion_reasons(batch)
    assert mask.to_pylist() == [c[3] is None for c in CASES]
    assert reasons.to_pylist() == [c[3] for c in CASES]
    counts = {d["values"]: d["counts"] for d in pc.value_counts(reasons.drop_null()).to_pylist()}
    assert counts == {"not_an_image": 6, "delete_marker": 2, "not_latest_version": 1}


def test_candidates_from_a_current_versions_batch_without_version_columns():
    batch = pa.record_batch({"bucket": ["b", "b"], "key": ["a.jpg", "b.doc"]})
    assert candidate_mask(batch).to_pylist() == [True, False]
    assert exclusion_reasons(batch).to_pylist() == [None, "not_an_image"]


def test_select_candidates_gives_the_candidate_schema():
    selected = select_candidates(inventory_batch([c[:3] for c in CASES]))
    assert selected.schema == CANDIDATE_SCHEMA
    assert selected.column("key").to_pylist() == [c[0] for c in CASES if c[3] is None]
    assert selected.column("version_id").to_pylist() == [f"v{i}" for i, c in enumerate(CASES) if c[3] is None]
    # and straight into a manifest
    rows = parse(encode_manifest_rows(selected))
    assert [r[1] for r in rows] == ["a.jpg", "b.JPG", "c.jpeg", "d.Jpeg", "e.png", "dir/f.PNG"]
