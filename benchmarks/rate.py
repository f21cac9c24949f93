"""Measurement 4: registrations per second against a configured rate, with a gateway that
takes `gateway_latency` per call (RecordingGateway), through `index_qualified` with the
real RateLimiter, LocalObjectStore and SqliteImportHistory."""

from __future__ import annotations

import os
from typing import Callable

import pyarrow as pa

from rivbulk_pipeline.core.model import INDEXED_SCHEMA, QUALIFIED_SCHEMA, ObjectRef, Outcome, Reason
from rivbulk_pipeline.core.rules.ratelimit import RateLimiter, max_calls_in_any_window
from rivbulk_pipeline.core.steps.indexing import IndexingPolicy, index_qualified
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.resources.registration import S3TagRegistrationProvider

from .baseline import baseline_index
from .data import FACES_BUCKET, candidate_batch, make_image_objects
from .emulated import RecordingGateway


def _achieved_rate(entries: list[float]) -> float:
    """Calls per second between the first call and the last: (n - 1) intervals over that span."""
    entries = sorted(entries)
    return (len(entries) - 1) / (entries[-1] - entries[0]) if len(entries) > 1 else 0.0


def measure_rate(
    workdir: str,
    objects: int,
    baseline_objects: int,
    rate_per_second: float,
    concurrency: int = 8,
    gateway_latency: float = 0.150,
    log: Callable[[str], None] = print,
) -> dict:
    """Ours: `index_qualified` with a RateLimiter at `rate_per_second` over `objects`; the
    baseline: sequential, unthrottled calls over `baseline_objects`. Rates come from the
    gateway's own record of when each call arrived."""
    store = LocalObjectStore(root=os.path.join(workdir, "rate-store"))
    log(f"  creating {objects + baseline_objects:,} objects ...")
    candidates = candidate_batch(
        store, FACES_BUCKET, make_image_objects(store, FACES_BUCKET, 0, objects + baseline_objects)
    )
    ours_rows = candidates.slice(0, objects)
    n = ours_rows.num_rows
    qualified = pa.RecordBatch.from_arrays(
        [ours_rows.column(name) for name in ("bucket", "key", "version_id", "size", "e_tag")]
        + [
            pa.repeat(pa.scalar(True), n),
            pa.repeat(pa.scalar(Reason.QUALIFIED.value), n),
            pa.repeat(pa.scalar(""), n),
            pa.array([f"user-{i}" for i in range(n)], pa.string()),
            pa.nulls(n, pa.string()),
        ],
        schema=QUALIFIED_SCHEMA,
    )
    history = SqliteImportHistory(db_path=os.path.join(workdir, "rate-history.sqlite"))
    gateway = RecordingGateway(gateway_latency)
    log(f"  ours: {objects:,} registrations at {rate_per_second:g}/s, concurrency {concurrency} ...")
    results = pa.Table.from_batches(
        list(
            index_qualified(
                [qualified],
                store=store,
                provider=S3TagRegistrationProvider(store=store, allowed_property_buckets=[FACES_BUCKET]),
                gateway=gateway,
                history=history,
                limiter=RateLimiter(rate_per_second),
                policy=IndexingPolicy(owner="benchmark-run", concurrency=concurrency),
            )
        ),
        schema=INDEXED_SCHEMA,
    )
    outcomes = results.column("outcome").to_pylist()
    if outcomes.count(Outcome.INDEXED.value) != objects or len(gateway.entries) != objects:
        raise RuntimeError(f"ours indexed {outcomes.count(Outcome.INDEXED.value)} of {objects} objects")
    history.close()

    base_gateway = RecordingGateway(gateway_latency)
    log(f"  baseline: {baseline_objects:,} registrations, sequential and unthrottled ...")
    rows = [
        (ObjectRef(FACES_BUCKET, key), f"user-{i}")
        for i, key in enumerate(candidates.column("key").to_pylist()[objects:])
    ]
    baseline_index(rows, store, base_gateway)
    return {
        "objects": objects,
        "baseline_objects": baseline_objects,
        "rate": rate_per_second,
        "concurrency": concurrency,
        "gateway_latency_ms": gateway_latency * 1000,
        "ours_achieved": _achieved_rate(gateway.entries),
        "ours_max_window": max_calls_in_any_window(gateway.entries),
        "baseline_achieved": _achieved_rate(base_gateway.entries),
        "baseline_max_window": max_calls_in_any_window(base_gateway.entries),
    }
