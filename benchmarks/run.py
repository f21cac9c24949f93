"""`python -m benchmarks.run [--quick] [--full] [--only NAME ...]`: OURS vs BASELINE, one table, PASS/FAIL.

Measurements (NAME): ingest, qualification, incremental, rate, summary, scale (daily runs of
100k and 1M objects, and 10M with --full; DynamoDB lookups on moto's server), listing
(`rivbulk inventory` on a local bucket of 100k hand-copied files, and 1M with --full), hostile (the
qualification and indexing steps' peak RSS over a date holding a 500 MB properties file, a 100 MB
image and an 88-megapixel PNG beside normal objects). Data is generated in a temp
dir (or `--workdir`, kept) and every figure is printed next to its target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import pyarrow as pa

from .dynamo_lookup import measure_dynamo_lookup
from .hostile import HOSTILE, STEPS, measure_hostile
from .ingest import measure_ingest
from .listing import measure_listing
from .qualification import measure_incremental, measure_qualification
from .rate import measure_rate
from .riv_rate import measure_riv_rate
from .scale import measure_size
from .summary import measure_summary

MEASUREMENTS = ("ingest", "qualification", "incremental", "rate", "riv_rate", "summary", "scale", "listing", "hostile")


@dataclass(frozen=True)
class Sizes:
    ingest_rows: int = 1_000_000
    ingest_large_rows: int = 5_000_000
    ingest_repeats: int = 5
    qualification_objects: int = 5_000
    qualification_baseline_objects: int = 200
    store_latency: float = 0.020
    concurrency: int = 128
    incremental_objects: int = 10_000
    rate_objects: int = 300
    rate_baseline_objects: int = 40
    rate: float = 20.0
    gateway_latency: float = 0.150
    riv_rate_objects: int = 1_200  # a minute at 20/s
    summary_records: int = 1_000_000
    summary_dates: int = 30
    summary_table_rows: int = 10_000
    scale_objects: tuple[int, ...] = (100_000, 1_000_000)
    dynamo_records: int = 20_000
    listing_objects: tuple[int, ...] = (100_000,)
    hostile_normal: int = 30


FULL = Sizes()
QUICK = Sizes(
    ingest_rows=50_000,
    ingest_large_rows=250_000,
    ingest_repeats=1,
    qualification_objects=1_000,
    qualification_baseline_objects=20,
    incremental_objects=1_000,
    rate_objects=60,
    rate_baseline_objects=10,
    riv_rate_objects=400,
    summary_records=50_000,
    summary_dates=5,
    summary_table_rows=2_000,
    scale_objects=(10_000, 100_000),
    dynamo_records=2_000,
    listing_objects=(10_000,),
    hostile_normal=10,
)
LARGEST = 10_000_000  # --full
LISTING_LARGEST = 1_000_000  # --full

# scale targets: the daily run (1% new, everything else final) of the four assets
SCALE_SECONDS = {1_000_000: 30.0, 10_000_000: 300.0}
SCALE_PER_OBJECT_GROWTH = 1.5  # time per object at 10x the objects
SCALE_RSS_GROWTH = 1.5

# `rivbulk inventory`, 1M never-listed files: 10x faster than the 276 s it took (3,600 objects/s)
LISTING_SECONDS = {1_000_000: 27.6}

# the hostile date: what its large objects may add to a step's peak RSS (a step that reads none of them)
HOSTILE_RSS_ADDED = 100_000_000

# targets
INGEST_SPEEDUP = 4.0
RSS_GROWTH = 1.2
QUALIFICATION_SPEEDUP = 100.0
INCREMENTAL_READS_PCT = 1.5
RATE_LOW_PCT, RATE_HIGH_PCT = 95.0, 100.0


@dataclass(frozen=True)
class Line:
    number: str
    measurement: str
    ours: str
    baseline: str
    figure: str
    target: str
    passed: Optional[bool]  # None: shown for information, no target


def run_measurements(
    sizes: Sizes, only: Sequence[str], workdir: str, log: Callable[[str], None] = print
) -> dict[str, dict]:
    """Run the chosen measurements; returns their figures by name."""
    results: dict[str, dict] = {}
    for name in MEASUREMENTS:
        if name not in only:
            continue
        log(f"[{name}]")
        folder = os.path.join(workdir, name)
        os.makedirs(folder, exist_ok=True)
        started = time.perf_counter()
        if name == "ingest":
            results[name] = measure_ingest(
                folder, sizes.ingest_rows, sizes.ingest_large_rows, repeats=sizes.ingest_repeats, log=log
            )
        elif name == "qualification":
            results[name] = measure_qualification(
                folder,
                sizes.qualification_objects,
                sizes.qualification_baseline_objects,
                sizes.concurrency,
                latency_seconds=sizes.store_latency,
                log=log,
            )
        elif name == "incremental":
            results[name] = measure_incremental(folder, sizes.incremental_objects, log=log)
        elif name == "summary":
            results[name] = measure_summary(
                folder, sizes.summary_records, sizes.summary_dates, sizes.summary_table_rows, log=log
            )
        elif name == "scale":
            runs = []
            for objects in sizes.scale_objects:
                runs.append(measure_size(folder, objects, log=log))
                log(f"  {objects:,} objects: {sum(runs[-1]['asset_seconds'].values()):.1f}s for the four assets")
                log(f"  figures: {json.dumps(runs[-1])}")  # kept in the output should a later step fail
                shutil.rmtree(os.path.join(folder, f"scale-{objects}"), ignore_errors=True)
            results[name] = {"runs": runs, "dynamo": measure_dynamo_lookup(sizes.dynamo_records, log=log)}
        elif name == "riv_rate":
            results[name] = measure_riv_rate(folder, sizes.riv_rate_objects, sizes.rate, log=log)
        elif name == "listing":
            results[name] = {"runs": [measure_listing(folder, objects, log=log) for objects in sizes.listing_objects]}
        elif name == "hostile":
            results[name] = measure_hostile(folder, sizes.hostile_normal, log=log)
        else:
            results[name] = measure_rate(
                folder,
                sizes.rate_objects,
                sizes.rate_baseline_objects,
                sizes.rate,
                gateway_latency=sizes.gateway_latency,
                log=log,
            )
        log(f"  done in {time.perf_counter() - started:.0f}s")
    return results


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def _rows(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 and n % 100_000 == 0 else f"{n:,}"


def build_lines(results: dict[str, dict]) -> list[Line]:
    """One table line per figure, each with its target and PASS/FAIL."""
    lines = []
    if "ingest" in results:
        r = results["ingest"]
        speedup = r["ours_rows_per_s"] / r["baseline_rows_per_s"]
        lines.append(Line(
            "1", f"ingest rows/s, {_rows(r['rows'])} rows (best of {r['repeats']})",
            f"{r['ours_rows_per_s']:,.0f}/s", f"{r['baseline_rows_per_s']:,.0f}/s",
            f"{speedup:.2f}x", f">= {INGEST_SPEEDUP:g}x baseline", speedup >= INGEST_SPEEDUP,
        ))  # fmt: skip
        lines.append(Line(
            "1", f"ingest CPU seconds, {_rows(r['rows'])} rows (least of {r['repeats']})",
            f"{r['ours_cpu_seconds']:.2f} s", f"{r['baseline_cpu_seconds']:.2f} s",
            f"{r['baseline_cpu_seconds'] / r['ours_cpu_seconds']:.2f}x less CPU", "-", None,
        ))  # fmt: skip
        lines.append(Line(
            "1", f"wrong keys vs unquote_plus, of {r['ours_checked']:,}",
            f"{r['ours_wrong_keys']:,}", f"{r['baseline_wrong_keys']:,}",
            f"{100 * r['baseline_wrong_keys'] / max(1, r['baseline_checked']):.1f}% wrong in baseline",
            "ours 0 wrong", r["ours_wrong_keys"] == 0 and r["ours_checked"] == r["rows"],
        ))  # fmt: skip
        growth = r["ours_large_rss"] / r["ours_rss"]
        lines.append(Line(
            "1", f"peak RSS at {_rows(r['rows'])} / {_rows(r['large_rows'])} rows (startup)",
            f"{_mb(r['ours_rss'])} / {_mb(r['ours_large_rss'])} ({_mb(r['ours_startup_rss'])})",
            f"{_mb(r['baseline_rss'])} at {_rows(r['rows'])} ({_mb(r['baseline_startup_rss'])})",
            f"{growth:.2f}x", f"{_rows(r['large_rows'])} <= {RSS_GROWTH:g}x {_rows(r['rows'])}", growth <= RSS_GROWTH,
        ))  # fmt: skip
        lines.append(Line(
            "1", f"ingest rows/s, {_rows(r['large_rows'])} rows (info)",
            f"{r['ours_large_rows_per_s']:,.0f}/s", "-", "-", "-", None,
        ))  # fmt: skip
    if "qualification" in results:
        r = results["qualification"]
        speedup = r["ours_per_s"] / r["baseline_per_s"]
        lines.append(Line(
            "2", f"qualification objects/s, {r['latency_ms']:g} ms per store call",
            f"{r['ours_per_s']:,.0f}/s ({r['objects']:,} obj, {r['concurrency']} workers)",
            f"{r['baseline_per_s']:,.1f}/s ({r['baseline_objects']:,} obj, sequential)",
            f"{speedup:,.0f}x", f">= {QUALIFICATION_SPEEDUP:g}x baseline", speedup >= QUALIFICATION_SPEEDUP,
        ))  # fmt: skip
        lines.append(Line(
            "2", "tag reads per object (info)",
            f"{r['ours_tag_reads'] / r['objects']:.2f}", f"{r['baseline_tag_reads'] / r['baseline_objects']:.2f}",
            "-", "-", None,
        ))  # fmt: skip
    if "incremental" in results:
        r = results["incremental"]
        lines.append(Line(
            "3", f"tag reads, day 2 of {r['objects']:,} obj ({r['new_objects']:,} new)",
            f"{r['ours_tag_reads']:,} ({r['ours_reads_pct']:.2f}%)",
            f"{r['baseline_tag_reads']:,} ({r['baseline_reads_pct']:.0f}%)",
            f"{r['ours_reads_pct']:.2f}% of objects", f"<= {INCREMENTAL_READS_PCT:g}% of objects",
            r["ours_reads_pct"] <= INCREMENTAL_READS_PCT,
        ))  # fmt: skip
    if "rate" in results:
        r = results["rate"]
        pct = 100 * r["ours_achieved"] / r["rate"]
        ok = RATE_LOW_PCT <= pct <= RATE_HIGH_PCT and r["ours_max_window"] <= r["rate"]
        lines.append(Line(
            "4", f"registrations/s vs {r['rate']:g}/s, gateway {r['gateway_latency_ms']:g} ms",
            f"{r['ours_achieved']:.2f}/s ({r['objects']:,} obj, {r['concurrency']} workers)",
            f"{r['baseline_achieved']:.2f}/s ({r['baseline_objects']:,} obj, unthrottled)",
            f"{pct:.1f}% of configured", f"{RATE_LOW_PCT:g}-{RATE_HIGH_PCT:g}% of configured", ok,
        ))  # fmt: skip
        lines.append(Line(
            "4", "most calls in any 1-second window",
            f"{r['ours_max_window']}", f"{r['baseline_max_window']} (bounded only by latency)",
            "-", f"<= {r['rate']:g}", r["ours_max_window"] <= r["rate"],
        ))  # fmt: skip
    if "riv_rate" in results:
        r = results["riv_rate"]
        pct = 100 * r["achieved_at_gateway"] / r["rate"]
        within = r["max_window_sent"] <= r["rate"]  # what the load controls; the gateway's clock adds its own jitter
        lines.append(Line(
            "4b", f"registrations/s vs {r['rate']:g}/s, RIV stand-in answering in {r['latency_seconds']:g} s, defaults",
            f"{r['achieved_at_gateway']:.2f}/s ({r['objects']:,} obj, {r['in_flight_mean']:.0f} in flight,"
            f" peak {r['in_flight_peak']} of {r['concurrency_bound']})",
            "8 in flight before: 4/s", f"{pct:.1f}% of configured", f">= {RATE_LOW_PCT:g}% of configured",
            pct >= RATE_LOW_PCT and within,
        ))  # fmt: skip
        lines.append(Line(
            "4b", "most calls sent in any 1-second window (as the stand-in's clock saw them)",
            f"{r['max_window_sent']} ({r['max_window_at_gateway']})", "-", "-", f"<= {r['rate']:g} sent", within,
        ))  # fmt: skip
    if "summary" in results:
        r = results["summary"]
        lines.append(Line(
            "5", f"import_summary: {_rows(r['records'])} history records, {r['dates']} dates x {r['table_rows']:,} rows"
            f" (best of {r['repeats']})",
            f"{r['history_seconds'] + r['tables_seconds']:.2f} s (history {r['history_seconds']:.2f} s, tables"
            f" {r['tables_seconds']:.2f} s)",
            "-", f"{r['records'] / max(r['history_seconds'], 1e-9):,.0f} records/s", "-", None,
        ))  # fmt: skip
    if "scale" in results:
        lines.extend(_scale_lines(results["scale"]))
    if "listing" in results:
        for run in results["listing"]["runs"]:
            n, cold, warm = run["objects"], run["never_listed"], run["already_listed"]
            target = LISTING_SECONDS.get(n)
            lines.append(Line(
                "7", f"rivbulk inventory, {_rows(n)} local files never listed (whole command)",
                f"{cold['seconds']:.1f} s ({cold['objects_per_s']:,.0f} objects/s)", "-",
                f"peak RSS {_mb(cold['peak_rss_bytes'])}; load {run['load_before']:.1f}-{run['load_after']:.1f}",
                f"<= {target:g} s" if target else "-", cold["seconds"] <= target if target else None,
            ))  # fmt: skip
            lines.append(Line(
                "7", f"  the same, already listed (ETags cached), {_rows(n)}",
                f"{warm['seconds']:.1f} s ({warm['objects_per_s']:,.0f} objects/s)", "-",
                f"peak RSS {_mb(warm['peak_rss_bytes'])}", "-", None,
            ))  # fmt: skip
    if "hostile" in results:
        lines.extend(hostile_lines(results["hostile"]))
    return lines


def hostile_lines(r: dict) -> list[Line]:
    """Per step, its peak RSS against a step of the same date that reads none of the large objects
    (batch_manifest: the process, Dagster and the libraries), and whether every object got its outcome."""
    floor = r["steps"]["batch_manifest"]["peak_rss_bytes"]
    expected = {key: outcome for key, (_, outcome) in HOSTILE.items()}
    got = {key: r["outcomes"].get(key) for key in expected}
    normal_ok = sum(o == "index:indexed" for k, o in r["outcomes"].items() if k not in expected) == r["normal"]
    lines = []
    for step in STEPS:
        s = r["steps"][step]
        added = s["peak_rss_bytes"] - floor
        lines.append(Line(
            "8", f"hostile date, {step}: peak RSS (500 MB properties, 100 MB image, 88 MP PNG, {r['normal']} normal)",
            _mb(s["peak_rss_bytes"]), "-",
            f"+{_mb(added)} over a step reading none ({_mb(floor)}); finished: {s['success']}",
            f"finished, <= +{_mb(HOSTILE_RSS_ADDED)}", s["success"] and added <= HOSTILE_RSS_ADDED,
        ))  # fmt: skip
    lines.append(Line(
        "8", "  hostile objects refused with their reason, the others registered",
        ", ".join(f"{key.rsplit('/', 1)[1]}: {outcome}" for key, outcome in got.items()), "-",
        f"{r['normal']} normal objects indexed: {normal_ok}", "each its reason", got == expected and normal_ok,
    ))  # fmt: skip
    return lines


def _scale_lines(r: dict) -> list[Line]:
    lines = []
    previous = None
    for run in r["runs"]:
        n, assets = run["objects"], run["asset_seconds"]
        four = sum(assets.values())
        per_asset = " / ".join(
            f"{assets.get(a, 0):.1f}"
            for a in ("inventory_report", "batch_manifest", "qualified_objects", "indexed_users")
        )
        target = SCALE_SECONDS.get(n)
        lines.append(Line(
            "6", f"daily run, {_rows(n)} objects ({run['new']:,} new): four assets",
            f"{four:.1f} s ({n / four:,.0f} objects/s)", "-",
            f"{per_asset} s; job {run['total_seconds']:.1f} s, checks {run['check_seconds']:.1f} s",
            f"<= {target:g} s" if target else "-", four <= target if target else None,
        ))  # fmt: skip
        lines.append(Line(
            "6", f"  history / previous date / tag reads, {_rows(n)}",
            f"{run['history_lookups']} lookups of {run['history_keys']:,} keys", "-",
            f"{run['decided_by_previous_date']:,} by the previous date; {run['tag_reads']:,} tag reads", "-", None,
        ))  # fmt: skip
        lines.append(Line("6", f"  peak RSS, {_rows(n)}", _mb(run["peak_rss_bytes"]), "-", "-", "-", None))
        if previous is not None:
            growth = (four / n) / (previous[1] / previous[0]["objects"])
            rss = run["peak_rss_bytes"] / previous[0]["peak_rss_bytes"]
            large = n >= LARGEST
            lines.append(Line(
                "6", f"  time per object / peak RSS, {_rows(n)} vs {_rows(previous[0]['objects'])}",
                f"{growth:.2f}x / {rss:.2f}x", "-", "-",
                f"<= {SCALE_PER_OBJECT_GROWTH:g}x / <= {SCALE_RSS_GROWTH:g}x" if large else "-",
                (growth <= SCALE_PER_OBJECT_GROWTH and rss <= SCALE_RSS_GROWTH) if large else None,
            ))  # fmt: skip
        previous = (run, four)
    for run in r["dynamo"]["runs"]:
        lines.append(Line(
            "6", f"DynamoDB (moto server), {r['dynamo']['records']:,} items, day of {run['day']:,}: {run['strategy']}",
            f"{run['requests']:,} requests, {run['read_units']:,.0f} read units", "-",
            f"{run['seconds']:.1f} s on moto; automatic choice: {run['chosen_automatically']}", "-", None,
        ))  # fmt: skip
    return lines


def _verdict(passed: Optional[bool]) -> str:
    return "info" if passed is None else "PASS" if passed else "FAIL"


def format_table(lines: Sequence[Line]) -> str:
    header = Line("#", "measurement", "OURS", "BASELINE", "figure", "target", True)
    cells = [
        [
            line.number,
            line.measurement,
            line.ours,
            line.baseline,
            line.figure,
            line.target,
            _verdict(line.passed) if line is not header else "result",
        ]
        for line in [header, *lines]
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute or so)")
    parser.add_argument(
        "--full", action="store_true", help="the scale section also runs 10M objects, the listing 1M (several minutes)"
    )
    parser.add_argument("--only", action="append", choices=MEASUREMENTS, metavar="NAME",
                        help=f"run only this measurement (repeatable): {', '.join(MEASUREMENTS)}")  # fmt: skip
    parser.add_argument("--concurrency", type=int, help="qualification workers (default 128)")
    parser.add_argument("--rate", type=float, help="configured registrations per second (default 20)")
    parser.add_argument("--workdir", help="generate data here and keep it (default: a temp dir, removed)")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    if args.full:
        sizes = replace(
            sizes,
            scale_objects=(*sizes.scale_objects, LARGEST),
            listing_objects=(*sizes.listing_objects, LISTING_LARGEST),
        )
    if args.concurrency:
        sizes = replace(sizes, concurrency=args.concurrency)
    if args.rate:
        sizes = replace(sizes, rate=args.rate)
    only = args.only or list(MEASUREMENTS)
    workdir = args.workdir or tempfile.mkdtemp(prefix="rivbulk-bench-")
    os.makedirs(workdir, exist_ok=True)
    load = os.getloadavg()[0]
    print(
        f"rivbulk benchmark{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs, load average {load:.2f} at"
        " start, "
        f"Python {platform.python_version()}, pyarrow {pa.__version__}; data in {workdir}",
        flush=True,
    )
    started = time.perf_counter()
    try:
        results = run_measurements(sizes, only, workdir, log=lambda message: print(message, flush=True))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    lines = build_lines(results)
    print()
    print(format_table(lines))
    print(f"\ntotal {time.perf_counter() - started:.0f}s; load average {os.getloadavg()[0]:.2f} at the end")
    return 0 if all(line.passed is not False for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
