"""The previous-date shortcut: only final outcomes for the same key, version and ETag skip the
history; everything else still asks it. Real store, real SQLite history, real stored tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.core.model import (
    CANDIDATE_SCHEMA,
    INDEXED_SCHEMA,
    QUALIFIED_SCHEMA,
    HistoryRecord,
    HistoryStatus,
    ObjectRef,
)
from rivbulk_pipeline.core.steps.known_outcomes import Known, KnownOutcomes, fingerprints, load_previous_outcomes
from rivbulk_pipeline.core.steps.qualify import Decision, QualifyStats, _decisions_batch, qualify_candidates
from rivbulk_pipeline.core.steps.tables import table_location, write_table
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.resources.registration import S3TagRegistrationProvider

BUCKET, OUT, PREFIX = "faces", "outputs", "rivbulk"
PREVIOUS, TODAY = "2026-03-01", "2026-03-02"


class CountingHistory(SqliteImportHistory):
    """The real SQLite history, counting the keys it is asked about."""

    def lookup_table(self, keys: pa.Table) -> pa.Table:
        self.__dict__.setdefault("asked", []).extend(keys.column("object_uri").to_pylist())
        return super().lookup_table(keys)


@pytest.fixture
def world(tmp_path: Path):
    store = LocalObjectStore(root=str(tmp_path / "store"))
    store.create_bucket(BUCKET)
    store.create_bucket(OUT)
    history = CountingHistory(db_path=str(tmp_path / "history.sqlite"))
    provider = S3TagRegistrationProvider(store=store, allowed_property_buckets=[BUCKET])
    etags = {}
    for n, name in enumerate(["same", "changed", "transient", "missing", "edited", "failed"]):
        key = f"people/{name}.png"
        etags[name] = store.put_bytes(BUCKET, key, face_image(300 + n))
        store.put_tags(BUCKET, key, {"UserId": name})
    yield store, history, provider, etags
    history.close()


def _candidates(etags: dict[str, str], names) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [{"bucket": BUCKET, "key": f"people/{n}.png", "version_id": None, "size": 1, "e_tag": etags[n]} for n in names],
        schema=CANDIDATE_SCHEMA,
    )


def _store_table(store, asset: str, date: str, schema: pa.Schema, rows: list[dict]) -> None:
    full = [{name: row.get(name) for name in schema.names} for row in rows]
    write_table(
        store, table_location(OUT, PREFIX, asset, date), schema, [pa.RecordBatch.from_pylist(full, schema=schema)]
    )


def _row(name: str, etag: str, **fields) -> dict:
    return {"bucket": BUCKET, "key": f"people/{name}.png", "version_id": None, "size": 1, "e_tag": etag, **fields}


def _final(history, name: str, etag: str, status: HistoryStatus, run: str = "run-0") -> None:
    ref = ObjectRef(BUCKET, f"people/{name}.png")
    assert history.claim(ref, etag, run, 60)
    history.record(
        HistoryRecord(
            ref=ref,
            etag=etag,
            status=status,
            owner=run,
            user_id=name,
            reason="no face" if status == HistoryStatus.FAILED_PERMANENT else "",
        )
    )


def _qualify(store, history, provider, batch, known):
    stats = QualifyStats()
    out = pa.Table.from_batches(
        list(qualify_candidates([batch], store=store, provider=provider, history=history, known=known, stats=stats)),
        schema=QUALIFIED_SCHEMA,
    )
    return {row["key"].split("/")[1][:-4]: row for row in out.to_pylist()}, stats


def test_only_unchanged_final_outcomes_skip_the_history(world) -> None:
    store, history, provider, etags = world
    names = ["same", "changed", "transient", "missing", "edited", "failed"]
    # The previous date: what its two tables said.
    _store_table(store, "qualified_objects", PREVIOUS, QUALIFIED_SCHEMA, [
        _row("same", etags["same"], qualified=True, reason="qualified", user_id="same"),
        _row("changed", "an-older-etag", qualified=False, reason="already_indexed"),
        _row("transient", etags["transient"], qualified=True, reason="qualified", user_id="transient"),
        _row("edited", etags["edited"], qualified=True, reason="qualified", user_id="edited"),
        _row("failed", etags["failed"], qualified=False, reason="previously_failed"),
    ])  # fmt: skip
    _store_table(store, "indexed_users", PREVIOUS, INDEXED_SCHEMA, [
        _row("same", etags["same"], outcome="indexed", reason="SUCCEEDED", attempts=1),
        _row("transient", etags["transient"], outcome="failed_transient", reason="http_503", attempts=4),
        _row("edited", etags["edited"], outcome="skipped", reason="claimed by another run", attempts=0),
    ])  # fmt: skip
    # The history as it stands today: another run indexed `edited` after the previous date was
    # loaded; `same` and `failed` are deliberately absent, so asking about them would show.
    _final(history, "changed", "an-older-etag", HistoryStatus.INDEXED)
    _final(history, "transient", etags["transient"], HistoryStatus.FAILED_TRANSIENT)
    _final(history, "missing", etags["missing"], HistoryStatus.INDEXED)
    _final(history, "edited", etags["edited"], HistoryStatus.INDEXED, run="another-run")

    known = load_previous_outcomes(store, OUT, PREFIX, TODAY)
    assert (
        known is not None and known.source == f"dt={PREVIOUS}" and len(known) == 3
    )  # same, failed, changed (its older ETag)
    decided, stats = _qualify(store, history, provider, _candidates(etags, names), known)

    assert (decided["same"]["reason"], decided["failed"]["reason"]) == ("already_indexed", "previously_failed")
    assert "previous date" in decided["same"]["detail"] and decided["same"]["detail"].startswith(
        f"s3://{BUCKET}/people/same.png"
    )
    asked = {uri.rsplit("/", 1)[1][:-4] for uri in history.asked}
    assert asked == {"changed", "transient", "missing", "edited"}  # every row not final-and-unchanged
    assert decided["changed"]["reason"] == "qualified"  # new ETag: tags read, registered again
    assert decided["transient"]["reason"] == "qualified"  # a transient outcome is retried
    assert decided["missing"]["reason"] == "already_indexed"  # absent from the previous date: the history knows
    assert decided["edited"]["reason"] == "already_indexed" and "import history" in decided["edited"]["detail"]
    assert (stats.known_before, stats.history_keys, stats.tag_reads) == (2, 4, 2)


def test_a_previous_date_never_loaded_means_every_row_asks_the_history(world) -> None:
    store, history, provider, etags = world
    # Only a *later* date has tables: it is not a previous date.
    _store_table(
        store,
        "qualified_objects",
        "2026-03-05",
        QUALIFIED_SCHEMA,
        [_row("same", etags["same"], qualified=False, reason="already_indexed")],
    )
    assert load_previous_outcomes(store, OUT, PREFIX, TODAY) is None
    _final(history, "same", etags["same"], HistoryStatus.INDEXED)
    decided, stats = _qualify(store, history, provider, _candidates(etags, ["same", "missing"]), None)
    assert decided["same"]["reason"] == "already_indexed" and "import history" in decided["same"]["detail"]
    assert decided["missing"]["reason"] == "qualified"
    assert (stats.known_before, stats.history_keys, stats.tag_reads) == (0, 2, 1)


def test_an_unfinished_previous_date_counts_only_its_qualification(world) -> None:
    store, history, provider, etags = world
    _store_table(
        store,
        "qualified_objects",
        PREVIOUS,
        QUALIFIED_SCHEMA,
        [
            _row("same", etags["same"], qualified=True, reason="qualified", user_id="same"),
            _row("failed", etags["failed"], qualified=False, reason="previously_failed"),
        ],
    )  # fmt: skip  (no indexed_users table: indexing of that date never finished)
    known = load_previous_outcomes(store, OUT, PREFIX, TODAY)
    assert known is not None and len(known) == 1
    decided, stats = _qualify(store, history, provider, _candidates(etags, ["same", "failed"]), known)
    assert (decided["same"]["reason"], decided["failed"]["reason"]) == ("qualified", "previously_failed")
    assert stats.history_keys == 1


def test_fingerprints_tell_apart_every_field_and_treat_an_empty_version_as_null() -> None:
    base = {"bucket": "b", "key": "k/a.png", "version_id": None, "size": 1, "e_tag": "e1"}
    variants = [
        base,
        {**base, "bucket": "c"},
        {**base, "key": "k/b.png"},
        {**base, "version_id": "v1"},
        {**base, "e_tag": "e2"},
        {**base, "bucket": "bk", "key": "/a.png"},
    ]
    prints = fingerprints(pa.RecordBatch.from_pylist(variants, schema=CANDIDATE_SCHEMA))
    assert len(set(prints.tolist())) == len(variants)
    empty = fingerprints(pa.RecordBatch.from_pylist([{**base, "version_id": ""}], schema=CANDIDATE_SCHEMA))
    assert empty[0] == prints[0]
    known = KnownOutcomes.build([(prints[:1], Known.INDEXED)], "test")
    no_etag = pa.RecordBatch.from_pylist([base, {**base, "e_tag": None}], schema=CANDIDATE_SCHEMA)
    assert known.match(no_etag).tolist() == [Known.INDEXED, Known.UNKNOWN]


def test_each_final_rows_detail_says_who_decided_and_a_recorded_failure_its_reason():
    keys = ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]
    batch = pa.RecordBatch.from_pydict(
        {"bucket": ["bk"] * 6, "key": keys, "version_id": [None, "v2", None, None, None, None],
         "size": [1] * 6, "e_tag": ["e"] * 6},
        schema=CANDIDATE_SCHEMA,
    )  # fmt: skip
    final = np.array([Known.INDEXED, Known.INDEXED, Known.FAILED_PERMANENT, Known.FAILED_PERMANENT,
                      Known.FAILED_PERMANENT, Known.UNKNOWN], dtype=np.uint8)  # fmt: skip
    from_history = np.array([True, False, True, True, False, False])
    reasons = pa.array([None, None, "bad_image", None, None, None], pa.string())
    pending = np.array([5])
    rows = _decisions_batch(batch, final, from_history, reasons, pending, [Decision(True, "qualified", "")]).to_pylist()
    assert [r["detail"] for r in rows] == [
        "s3://bk/a.png: already indexed (import history, same ETag)",
        "s3://bk/b.png?versionId=v2: already indexed (the previous date's outcome, same ETag)",
        "s3://bk/c.png: failed permanently before with this ETag (bad_image)",
        "s3://bk/d.png: failed permanently before with this ETag ()",
        "s3://bk/e.png: failed permanently before with this ETag (the previous date's outcome; the reason is in the"
        " import history)",
        "",
    ]
    assert [r["reason"] for r in rows] == ["already_indexed"] * 2 + ["previously_failed"] * 3 + ["qualified"]
