"""Measurements 2 and 3: qualification throughput at S3-like latency, and the tag reads of
an incremental day. Both run `qualify_candidates` against a real LocalObjectStore, wrapped
by `LatencyStore` (sleeps per call, counts calls) and a real SqliteImportHistory."""
from __future__ import annotations

import hashlib
import os
import time
from typing import Callable

import pyarrow as pa

from rivbulk_pipeline.core.model import CANDIDATE_SCHEMA, HistoryRecord, HistoryStatus, ObjectRef, Reason
from rivbulk_pipeline.core.qualify import qualify_candidates
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.resources.registration import S3TagRegistrationProvider

from .baseline import baseline_qualify
from .data import make_image_objects
from .emulated import LatencyStore

BUCKET = "bench-faces"


def _candidates(store: LocalObjectStore, keys: list[str]) -> pa.RecordBatch:
    """The keys as a batch_manifest table; ETags hashed here (listing would make the
    store cache each one in its own committed write)."""
    rows = []
    for key in keys:
        with open(os.path.join(store.root, BUCKET, *key.split("/")), "rb") as f:
            body = f.read()
        rows.append({"bucket": BUCKET, "key": key, "version_id": None, "size": len(body), "e_tag": hashlib.md5(body).hexdigest()})
    return pa.RecordBatch.from_pylist(rows, schema=CANDIDATE_SCHEMA)


def _ours(batch: pa.RecordBatch, store: LatencyStore, history: SqliteImportHistory, concurrency: int) -> pa.Table:
    provider = S3TagRegistrationProvider(store=store._inner, allowed_property_buckets=[BUCKET])
    return pa.Table.from_batches(
        list(qualify_candidates([batch], store=store, provider=provider, history=history, concurrency=concurrency)),
    )


def _refs(batch: pa.RecordBatch) -> list[ObjectRef]:
    return [ObjectRef(BUCKET, key) for key in batch.column("key").to_pylist()]


def measure_qualification(
    workdir: str,
    objects: int,
    baseline_objects: int,
    concurrency: int,
    latency_seconds: float = 0.020,
    log: Callable[[str], None] = print,
) -> dict:
    """Objects qualified per second: ours over `objects`, the baseline over `baseline_objects`."""
    store = LocalObjectStore(root=os.path.join(workdir, "qualification-store"))
    log(f"  creating {objects:,} tagged objects ...")
    batch = _candidates(store, make_image_objects(store, BUCKET, 0, objects))
    history = SqliteImportHistory(db_path=os.path.join(workdir, "qualification-history.sqlite"))

    slow = LatencyStore(store, latency_seconds)
    log(f"  ours: {objects:,} objects, concurrency {concurrency} ...")
    started = time.perf_counter()
    table = _ours(batch, slow, history, concurrency)
    ours_seconds = time.perf_counter() - started
    qualified = table.column("qualified").to_pylist().count(True)
    if qualified != objects:
        reasons = sorted(set(table.column("reason").to_pylist()))
        raise RuntimeError(f"ours qualified {qualified} of {objects} objects (reasons: {reasons})")
    ours_reads = slow.calls["get_tags"]

    slow_baseline = LatencyStore(store, latency_seconds)
    log(f"  baseline: {baseline_objects:,} objects, sequential ...")
    started = time.perf_counter()
    decisions = baseline_qualify(_refs(batch)[:baseline_objects], slow_baseline)
    baseline_seconds = time.perf_counter() - started
    if sum(ok for _, ok in decisions) != baseline_objects:
        raise RuntimeError("the baseline did not qualify every object")
    history.close()
    return {
        "objects": objects,
        "baseline_objects": baseline_objects,
        "concurrency": concurrency,
        "latency_ms": latency_seconds * 1000,
        "ours_per_s": objects / ours_seconds,
        "baseline_per_s": baseline_objects / baseline_seconds,
        "ours_tag_reads": ours_reads,
        "baseline_tag_reads": slow_baseline.calls["get_tags"],
    }


def measure_incremental(workdir: str, day1_objects: int, new_fraction: float = 0.01, log: Callable[[str], None] = print) -> dict:
    """Tag reads on day 2, when every day-1 object is INDEXED in the history (same ETag)."""
    new_objects = max(1, round(day1_objects * new_fraction))
    store = LocalObjectStore(root=os.path.join(workdir, "incremental-store"))
    log(f"  day 1: {day1_objects:,} objects, all indexed in the import history ...")
    day1 = _candidates(store, make_image_objects(store, BUCKET, 0, day1_objects))
    history = SqliteImportHistory(db_path=os.path.join(workdir, "incremental-history.sqlite"))
    for ref, etag in zip(_refs(day1), day1.column("e_tag").to_pylist()):
        if not history.claim(ref, etag, "day-1-run", 600):
            raise RuntimeError(f"{ref}: could not claim a fresh object")
        history.record(HistoryRecord(ref, etag, HistoryStatus.INDEXED, user_id="-", owner="day-1-run"))

    log(f"  day 2: {new_objects:,} new objects ({new_fraction:.0%}) ...")
    new = _candidates(store, make_image_objects(store, BUCKET, day1_objects, new_objects))
    day2 = pa.Table.from_batches([day1, new]).combine_chunks().to_batches()[0]

    counted = LatencyStore(store, 0.0)  # only the count matters here
    table = _ours(day2, counted, history, concurrency=32)
    reasons = table.column("reason").to_pylist()
    if reasons.count(Reason.ALREADY_INDEXED.value) != day1_objects or reasons.count(Reason.QUALIFIED.value) != new_objects:
        raise RuntimeError("ours did not tell the indexed day-1 objects from the new ones")
    counted_baseline = LatencyStore(store, 0.0)
    baseline_qualify(_refs(day2), counted_baseline)
    history.close()
    objects = day1_objects + new_objects
    return {
        "objects": objects,
        "new_objects": new_objects,
        "ours_tag_reads": counted.calls["get_tags"],
        "baseline_tag_reads": counted_baseline.calls["get_tags"],
        "ours_reads_pct": 100 * counted.calls["get_tags"] / objects,
        "baseline_reads_pct": 100 * counted_baseline.calls["get_tags"] / objects,
    }
