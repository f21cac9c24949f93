"""Measurement 5: the `import_summary` asset's work over a large import history.

An SQLite import history of `records` records (90% indexed, 5% permanent, 4% transient
failures, 1% claims) and `dates` dates of stored qualified_objects / indexed_users tables with
as many rows between them; then `build_summary`, as the asset calls it, timed (best of
`repeats`), in this process.
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import date, timedelta
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rivbulk_pipeline.core.model import INDEXED_SCHEMA, QUALIFIED_SCHEMA
from rivbulk_pipeline.defs.summary import build_summary
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.settings import Settings

STATUSES = np.array(["indexed", "failed_permanent", "failed_transient", "claimed"])
SHARES = [0.90, 0.05, 0.04, 0.01]
QUALIFY_REASONS = np.array(["qualified", "already_indexed", "no_user_id", "ignored", "bad_properties"])
GATEWAY_REASONS = np.array(
    ["SUCCEEDED", "too_small: the image is 40x40 px", "UserAlreadyExists: registered to another user", "HTTP 503"]
)


def _history_rows(records: int, rng: np.random.Generator, chunk: int = 100_000) -> Iterator[list[tuple]]:
    now = time.time()
    for start in range(0, records, chunk):
        n = min(chunk, records - start)
        statuses = rng.choice(STATUSES, size=n, p=SHARES)
        updated = now - rng.uniform(0, 90 * 86400, size=n)
        yield [
            (f"s3://faces/users/{start + i:08d}/portrait.jpg", "null", f"{start + i:032x}", str(statuses[i]),
             None, "", 1, "run-bench", float(updated[i]),
             float(updated[i] + 600) if statuses[i] == "claimed" else 0.0, "{}")
            for i in range(n)
        ]  # fmt: skip


def make_history(path: str, records: int, seed: int = 5) -> SqliteImportHistory:
    history = SqliteImportHistory(db_path=path)
    history._conn()  # creates the schema
    history.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    for rows in _history_rows(records, np.random.default_rng(seed)):
        conn.executemany(
            "INSERT INTO import_history (object_uri, version_id, etag, status, user_id, reason, attempts, owner,"
            " updated_at, claim_expires_at, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.execute("COMMIT")
    conn.close()
    return history


def make_tables(root: str, settings: Settings, dates: list[str], rows: int, seed: int = 7) -> None:
    """Per date, a qualified_objects and an indexed_users table of `rows` rows each."""
    rng = np.random.default_rng(seed)
    for day in dates:
        keys = pa.array([f"users/{day}/{i:07d}.jpg" for i in range(rows)])
        common = {"bucket": pa.array(["faces"] * rows), "key": keys, "version_id": pa.nulls(rows, pa.string()),
                  "size": pa.array(np.full(rows, 200_000)), "e_tag": pa.array(["0" * 32] * rows)}  # fmt: skip
        reasons = rng.choice(QUALIFY_REASONS, size=rows, p=[0.8, 0.1, 0.05, 0.03, 0.02])
        qualified = pa.table({**common, "qualified": pa.array(reasons == "qualified"), "reason": pa.array(reasons),
                              "detail": pa.array([""] * rows), "user_id": pa.nulls(rows, pa.string()),
                              "properties_ref": pa.nulls(rows, pa.string())}, schema=QUALIFIED_SCHEMA)  # fmt: skip
        gateway = rng.choice(GATEWAY_REASONS, size=rows, p=[0.9, 0.04, 0.03, 0.03])
        outcomes = np.where(
            gateway == "SUCCEEDED", "indexed", np.where(gateway == "HTTP 503", "failed_transient", "failed_permanent")
        )
        indexed = pa.table({**common, "outcome": pa.array(outcomes), "reason": pa.array(gateway),
                            "attempts": pa.array(np.ones(rows, dtype=np.int32))}, schema=INDEXED_SCHEMA)  # fmt: skip
        for asset, table in (("qualified_objects", qualified), ("indexed_users", indexed)):
            location = settings.table_location(asset, day)
            path = os.path.join(root, location.bucket, *location.key.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(table, path, compression="zstd")


def measure_summary(
    workdir: str, records: int, dates: int, table_rows: int, repeats: int = 3, log: Callable[[str], None] = print
) -> dict:
    settings = Settings(home=workdir)
    started = time.perf_counter()
    history = make_history(os.path.join(workdir, "import_history.sqlite"), records)
    days = [(date(2026, 1, 1) + timedelta(days=i)).isoformat() for i in range(dates)]
    store_root = os.path.join(workdir, "store")
    make_tables(store_root, settings, days, table_rows)
    log(
        f"  {records:,} history records and {dates} dates x {table_rows:,} rows written in"
        f" {time.perf_counter() - started:.0f}s"
    )
    store = LocalObjectStore(root=store_root)
    best = None
    for _ in range(repeats):
        summary = build_summary(settings, store, history, days)
        total = summary.tables_seconds + summary.history_seconds
        if best is None or total < best.tables_seconds + best.history_seconds:
            best = summary
    history.close()
    assert best is not None
    assert best.totals.records == records, best.totals  # every record counted
    assert int(best.by_date["candidates"].sum()) == dates * table_rows
    return {
        "records": records,
        "dates": dates,
        "table_rows": table_rows,
        "repeats": repeats,
        "history_seconds": best.history_seconds,
        "tables_seconds": best.tables_seconds,
        "registered": best.totals.registered,
        "backlog": best.totals.transient_backlog,
    }
