"""Measurement riv_rate: registrations per second at RIVBULK_INDEX_RATE=20 against the RIV stand-in
answering each register call in 2 s (a Step Functions workflow of three Lambdas), in a process of its own, every other
setting at its default. The rate is read from the stand-in's own record of when each workflow
started; the busiest second is counted both there and at the client's sends."""

from __future__ import annotations

import os
from typing import Callable

import pyarrow as pa

from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.core.model import QUALIFIED_SCHEMA, Outcome
from rivbulk_pipeline.core.rules.ratelimit import RateLimiter, max_calls_in_any_window
from rivbulk_pipeline.core.steps.call_meter import CallMeter
from rivbulk_pipeline.core.steps.indexing import IndexingPolicy, index_qualified
from rivbulk_pipeline.resources.gateway import RivHttpGateway
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.resources.registration import S3TagRegistrationProvider
from rivbulk_pipeline.settings import Settings
from rivbulk_pipeline_tests.support.riv_standin import RivStandInProcess

BUCKET = "riv-rate-faces"


def measure_riv_rate(
    workdir: str, objects: int, rate_per_second: float = 20.0, latency: float = 2.0, log: Callable[[str], None] = print
) -> dict:
    settings = Settings(deployment="local", index_rate=rate_per_second)  # every other setting at its default
    store = LocalObjectStore(root=os.path.join(workdir, "riv-rate-store"))
    store.create_bucket(BUCKET)
    log(f"  creating {objects:,} face images ...")
    rows = []
    for n in range(objects):
        key = f"faces/{n:06d}.png"
        etag = store.put_bytes(BUCKET, key, face_image(10_000 + n))
        rows.append(
            dict(
                bucket=BUCKET,
                key=key,
                version_id=None,
                size=None,
                e_tag=etag,
                qualified=True,
                reason="qualified",
                detail="",
                user_id=f"user-{n}",
                properties_ref=None,
            )
        )
    batch = pa.RecordBatch.from_pylist(rows, schema=QUALIFIED_SCHEMA)
    history = SqliteImportHistory(db_path=os.path.join(workdir, "riv-rate-history.sqlite"))
    meter = CallMeter(settings.index_rate, settings.index_concurrency)
    with RivStandInProcess(version="head", latency=latency) as riv:  # RIV in its own process, as deployed
        gateway = RivHttpGateway(
            url=riv.url, timeout_seconds=settings.gateway_timeout_seconds, pool_size=settings.index_concurrency
        )
        log(f"  {objects:,} registrations at {rate_per_second:g}/s, RIV answering in {latency:g} s ...")
        outcomes = [
            outcome
            for results in index_qualified(
                [batch],
                store=store,
                provider=S3TagRegistrationProvider(store=store, allowed_property_buckets=[BUCKET]),
                gateway=gateway,
                history=history,
                limiter=RateLimiter(settings.index_rate),
                policy=IndexingPolicy(
                    owner="benchmark-run",
                    concurrency=settings.index_concurrency,
                    max_attempts=settings.index_max_attempts,
                    lease_seconds=settings.claim_lease_seconds,
                    settle_after_seconds=settings.gateway_workflow_timeout_seconds,
                ),
                meter=meter,
            )
            for outcome in results.column("outcome").to_pylist()
        ]
        riv.stop()  # its observations
        starts = riv.workflow_starts
        registered = len(riv.registrations)
    history.close()
    if outcomes.count(Outcome.INDEXED.value) != objects or registered != objects:
        raise RuntimeError(
            f"indexed {outcomes.count(Outcome.INDEXED.value)} of {objects}; RIV holds {registered} users"
        )
    figures = meter.figures()
    log(f"  {figures.summary()}")
    return {
        "objects": objects,
        "rate": rate_per_second,
        "latency_seconds": latency,
        "concurrency_bound": settings.index_concurrency,
        "achieved_at_gateway": (len(starts) - 1) / (starts[-1] - starts[0]),
        "max_window_at_gateway": max_calls_in_any_window(starts),
        "max_window_sent": figures.most_in_one_second,
        "in_flight_mean": figures.in_flight_mean,
        "in_flight_peak": figures.in_flight_peak,
    }
