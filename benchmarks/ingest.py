"""Measurement 1: reading an inventory report, ours vs the baseline, each in a fresh process.

The parent runs `python -m benchmarks.ingest <mode> ...` once per figure, through the light
`benchmarks._launch`, which reports the child's own peak RSS; the child prints what it
measured as one JSON line. Modes: `ours` and `baseline` time one pass over
the report; `check-ours` and `check-baseline` compare every key with `unquote_plus` (untimed,
in their own process so the timed ones stay clean).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import pyarrow as pa

from rivbulk_pipeline.core.inventory.reader import iter_inventory_batches, load_manifest
from rivbulk_pipeline.resources.object_store import LocalObjectStore

from .baseline import baseline_inventory_rows
from .data import InventoryReport, truth_keys, write_csv_report

MODES = ("ours", "baseline", "check-ours", "check-baseline")
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class ChildRun:
    """What one child printed, and its peak resident set size."""

    figures: dict
    peak_rss_bytes: int


def run_child(mode: str, report: InventoryReport, spool_dir: str) -> ChildRun:
    """Run one mode in a fresh interpreter, started by the light `_launch` so that the
    peak RSS it reports is the child's own (see benchmarks/_launch.py)."""
    args = [
        sys.executable, "-m", "benchmarks._launch",
        sys.executable, "-m", "benchmarks.ingest", mode, report.store_root, report.bucket, report.folder, spool_dir,
        *report.data_keys,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PROJECT_ROOT, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(args, stdout=subprocess.PIPE, env=env, cwd=_PROJECT_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {mode!r} failed with exit code {done.returncode}")
    *_, figures, usage = done.stdout.decode().strip().splitlines()
    return ChildRun(json.loads(figures), json.loads(usage)["peak_rss_bytes"])


# ---------------------------------------------------------------- in the child


def _ours_keys(report: InventoryReport, spool_dir: str) -> Iterator[pa.Array]:
    """Our reader over the report's manifest: yields each batch's key column."""
    store = LocalObjectStore(root=report.store_root)
    manifest = load_manifest(store, report.bucket, report.folder)
    for batch in iter_inventory_batches(store, manifest, spool_dir=spool_dir):
        yield batch.column(1)  # INVENTORY_SCHEMA: bucket, key, ...


def _baseline_rows(report: InventoryReport) -> Iterator[tuple[str, ...]]:
    return baseline_inventory_rows(LocalObjectStore(root=report.store_root), report.bucket, report.data_keys)


def _child(mode: str, report: InventoryReport, spool_dir: str) -> dict:
    # Everything is imported before the clock starts; startup RSS shows what the imports cost.
    # pyarrow imports pandas lazily, on the first Python value it converts (0.3-0.9 s here):
    # a once-per-process cost, so it is paid here too.
    pa.scalar(False)
    figures: dict = {"startup_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if mode in ("ours", "baseline"):
        started, cpu_started = time.perf_counter(), time.process_time()
        if mode == "ours":
            rows = sum(len(keys) for keys in _ours_keys(report, spool_dir))
        else:
            rows = sum(1 for _ in _baseline_rows(report))
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        return {**figures, "rows": rows, "seconds": seconds, "cpu_seconds": cpu_seconds}
    if mode == "check-ours":
        got: Iterator[str] = (key for keys in _ours_keys(report, spool_dir) for key in keys.to_pylist())
    else:
        got = (row[1] for row in _baseline_rows(report))
    checked = wrong = 0
    for expected, actual in zip(truth_keys(report), got, strict=True):
        checked += 1
        wrong += expected != actual
    return {**figures, "checked": checked, "wrong": wrong}


# ---------------------------------------------------------------- in the parent


def measure_ingest(
    workdir: str, rows: int, large_rows: int, repeats: int = 3, log: Callable[[str], None] = print
) -> dict:
    """Ours and the baseline on `rows`, ours alone on `large_rows` (for peak RSS).

    Each timed run is a fresh process, `repeats` times; the best time counts (the machine
    is shared, and noise only ever slows a run down) and the highest peak RSS.
    """
    spool = os.path.join(workdir, "spool")
    os.makedirs(spool, exist_ok=True)
    log(f"  generating a {rows:,}-row and a {large_rows:,}-row CSV inventory report ...")
    small = write_csv_report(os.path.join(workdir, "inventory-small"), rows)
    large = write_csv_report(os.path.join(workdir, "inventory-large"), large_rows)

    def timed(name: str, mode: str, report: InventoryReport) -> tuple[float, float, int, int]:
        """(best rows/s, least CPU seconds, highest peak RSS, startup RSS) over the repeats."""
        runs = []
        for attempt in range(repeats):
            log(f"  {name} on {report.rows:,} rows, run {attempt + 1} of {repeats} ...")
            run = run_child(mode, report, spool)
            if run.figures["rows"] != report.rows:
                raise RuntimeError(f"{name} read {run.figures['rows']} rows of a {report.rows}-row report")
            runs.append(run)
        best = min(run.figures["seconds"] for run in runs)
        cpu = min(run.figures["cpu_seconds"] for run in runs)
        return report.rows / best, cpu, max(r.peak_rss_bytes for r in runs), min(r.figures["startup_rss"] for r in runs)

    ours_rate, ours_cpu, ours_rss, ours_startup = timed("ours", "ours", small)
    base_rate, base_cpu, base_rss, base_startup = timed("baseline", "baseline", small)
    large_rate, _, large_rss, _ = timed("ours", "ours", large)
    log("  checking every key of both against unquote_plus ...")
    check_ours = run_child("check-ours", small, spool).figures
    check_base = run_child("check-baseline", small, spool).figures
    return {
        "rows": rows,
        "large_rows": large_rows,
        "repeats": repeats,
        "ours_rows_per_s": ours_rate,
        "baseline_rows_per_s": base_rate,
        "ours_large_rows_per_s": large_rate,
        "ours_cpu_seconds": ours_cpu,
        "baseline_cpu_seconds": base_cpu,
        "ours_rss": ours_rss,
        "ours_large_rss": large_rss,
        "baseline_rss": base_rss,
        "ours_startup_rss": ours_startup,
        "baseline_startup_rss": base_startup,
        "ours_checked": check_ours["checked"],
        "ours_wrong_keys": check_ours["wrong"],
        "baseline_checked": check_base["checked"],
        "baseline_wrong_keys": check_base["wrong"],
    }


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="one ingest measurement (run by benchmarks.run)")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("store_root")
    parser.add_argument("bucket")
    parser.add_argument("folder")
    parser.add_argument("spool_dir")
    parser.add_argument("data_keys", nargs="+")
    args = parser.parse_args(argv)
    report = InventoryReport(args.store_root, args.bucket, args.folder, tuple(args.data_keys), 0)
    print(json.dumps(_child(args.mode, report, args.spool_dir)))


if __name__ == "__main__":
    main()
