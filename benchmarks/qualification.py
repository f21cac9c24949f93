"""Measurements 2 and 3: qualification throughput at S3-like latency, and the tag reads of
an incremental day. Both run `qualify_candidates` against a real LocalObjectStore, wrapped
by `LatencyStore` (sleeps per call, counts calls) and a real SqliteImportHistory."""

from __future__ import annotations

import os
import time
from typing import Callable

import pyarrow as pa

from rivbulk_pipeline.core.model import QUALIFIED_SCHEMA, HistoryRecord, HistoryStatus, ObjectRef, Reason
from rivbulk_pipeline.core.steps.qualify import qualify_candidates
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.resources.registration import S3TagRegistrationProvider

from .baseline import baseline_qualify
from .data import FACES_BUCKET, candidate_batch, make_image_objects
from .emulated import LatencyStore


def _ours(
    batch: pa.RecordBatch, store: LocalObjectStore, history: SqliteImportHistory, concurrency: int, latency: float
) -> tuple[pa.Table, LatencyStore]:
    """`qualify_candidates` over the batch with the store behind `latency`; the table and the
    wrapper (whose counts say how many calls were made)."""
    slow = LatencyStore(store, latency)
    provider = S3TagRegistrationProvider(store=store, allowed_property_buckets=[FACES_BUCKET])
    batches = qualify_candidates([batch], store=slow, provider=provider, history=history, concurrency=concurrency)
    return pa.Table.from_batches(list(batches), schema=QUALIFIED_SCHEMA), slow


def _refs(batch: pa.RecordBatch) -> list[ObjectRef]:
    return [ObjectRef(FACES_BUCKET, key) for key in batch.column("key").to_pylist()]


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
    batch = candidate_batch(store, FACES_BUCKET, make_image_objects(store, FACES_BUCKET, 0, objects))
    history = SqliteImportHistory(db_path=os.path.join(workdir, "qualification-history.sqlite"))

    log(f"  ours: {objects:,} objects, concurrency {concurrency} ...")
    started = time.perf_counter()
    table, slow = _ours(batch, store, history, concurrency, latency_seconds)
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


def measure_incremental(
    workdir: str, day1_objects: int, new_fraction: float = 0.01, log: Callable[[str], None] = print
) -> dict:
    """Tag reads on day 2, when every day-1 object is INDEXED in the history (same ETag)."""
    new_objects = max(1, round(day1_objects * new_fraction))
    store = LocalObjectStore(root=os.path.join(workdir, "incremental-store"))
    log(f"  day 1: {day1_objects:,} objects, all indexed in the import history ...")
    day1 = candidate_batch(store, FACES_BUCKET, make_image_objects(store, FACES_BUCKET, 0, day1_objects))
    history = SqliteImportHistory(db_path=os.path.join(workdir, "incremental-history.sqlite"))
    for ref, etag in zip(_refs(day1), day1.column("e_tag").to_pylist(), strict=True):
        if not history.claim(ref, etag, "day-1-run", 600):
            raise RuntimeError(f"{ref}: could not claim a fresh object")
        history.record(HistoryRecord(ref, etag, HistoryStatus.INDEXED, user_id="-", owner="day-1-run"))

    log(f"  day 2: {new_objects:,} new objects ({new_fraction:.0%}) ...")
    new = candidate_batch(store, FACES_BUCKET, make_image_objects(store, FACES_BUCKET, day1_objects, new_objects))
    day2 = pa.concat_batches([day1, new])

    table, counted = _ours(day2, store, history, concurrency=32, latency=0.0)  # only the count matters here
    reasons = table.column("reason").to_pylist()
    if (
        reasons.count(Reason.ALREADY_INDEXED.value) != day1_objects
        or reasons.count(Reason.QUALIFIED.value) != new_objects
    ):
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
