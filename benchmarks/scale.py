"""The scale section: a daily run of the four assets on buckets of 100k, 1M and 10M objects.

The day before is already loaded: every object but the new 1% is indexed in the import history
and final in the previous date's stored tables. Building that through the pipeline would take
longer than the measurement, so the old objects are synthetic but real files in the real
formats: the CSV.gz S3 Inventory report (manifest, checksum and all), the previous date's
Parquet tables, and the SQLite import history's rows. The new 1% are real PNG images with
UserId tags in the local store, registered for real by the embedded registry.

Each size runs `bulk_load_job` in a fresh process (`python -m benchmarks.scale run ...`), so
its peak RSS is its own; the per-asset times come from Dagster's own step events.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from datetime import datetime, timedelta, timezone
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.core.inventory.reader import REPORT_FOLDER_FORMAT
from rivbulk_pipeline.core.model import QUALIFIED_SCHEMA
from rivbulk_pipeline.core.steps.tables import write_table
from rivbulk_pipeline.resources.deployment import store_for
from rivbulk_pipeline.resources.history import SqliteImportHistory
from rivbulk_pipeline.settings import Settings

ASSETS = ("inventory_report", "batch_manifest", "qualified_objects", "indexed_users")
TODAY = datetime(2026, 3, 2, 6, 0, tzinfo=timezone.utc)
PREVIOUS = TODAY - timedelta(days=1)
_CHUNK = 250_000
_CSV_OPTIONS = pcsv.WriteOptions(include_header=False, quoting_style="all_valid")
FILE_SCHEMA = "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass"


def scale_env(home: str) -> dict[str, str]:
    """The local default under `home`, with a rate the embedded registry can take: the run is
    bounded by the pipeline, not by RIVBULK_INDEX_RATE."""
    return {"RIVBULK_HOME": home, "RIVBULK_INDEX_RATE": "100000", "RIVBULK_INDEX_CONCURRENCY": "8"}


def _settings(home: str) -> Settings:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVBULK_")}
    return Settings.from_env({**env, **scale_env(home)})


def old_keys(start: int, stop: int) -> pa.Array:
    digits = pc.utf8_lpad(pa.array(np.arange(start, stop)).cast(pa.string()), 9, "0")
    return pc.binary_join_element_wise("people/", digits, "/face.jpg", "")


def old_etags(start: int, stop: int) -> pa.Array:
    # a 32-hex-digit ETag-like value per object, distinct per object
    return pc.utf8_lpad(pa.array(np.arange(start, stop) * 7919 + 12345).cast(pa.string()), 32, "0")


def distinct_png(base: bytes, n: int) -> bytes:
    """`base` (a PNG) with a text chunk naming `n` before its end chunk: a valid, decodable PNG
    whose bytes (and so its face in the embedded registry) differ for every n."""
    body = b"tEXt" + b"rivbulk\x00" + str(n).encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return base[:-12] + chunk + base[-12:]


def build(home: str, objects: int, new_fraction: float = 0.01, log: Callable[[str], None] = print) -> dict:
    """The bucket, its report for TODAY, the previous date's tables and the history; returns counts."""
    shutil.rmtree(home, ignore_errors=True)
    settings = _settings(home)
    new = max(1, int(objects * new_fraction))
    old = objects - new
    store = store_for(settings)
    for bucket in (settings.image_bucket, settings.inventory_bucket):
        store.create_bucket(bucket)
    # The history exists before the previous date was loaded (its change log starts with it).
    history_path = str(settings.local_history_path)
    SqliteImportHistory(db_path=history_path)._conn().close()  # creates the file, WAL and schema
    started = time.perf_counter()

    # The new objects: real images with tags, written as plain files (the store takes files copied in).
    base = face_image(7, size=96)
    new_rows = {"key": [], "size": [], "e_tag": []}
    for n in range(new):
        key = f"new/{n // 1000:04d}/{n:07d}.png"
        body = distinct_png(base, n)
        path = os.path.join(store.root, settings.image_bucket, *key.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(body)
        store.put_tags(settings.image_bucket, key, {"UserId": f"user-{n}"})
        new_rows["key"].append(key)
        new_rows["size"].append(len(body))
        new_rows["e_tag"].append(hashlib.md5(body).hexdigest())
    log(f"  {new:,} new images with tags: {time.perf_counter() - started:.0f}s")

    # The report (CSV.gz, as AWS writes it), one data file per 5M rows.
    root = settings.report_root
    files = []
    stamp = pc.strftime(pa.array([PREVIOUS], pa.timestamp("s", tz="UTC")), format="%Y-%m-%dT%H:%M:%S.000Z")[0].as_py()

    def text_batch(keys: pa.Array, sizes: pa.Array, etags: pa.Array) -> pa.RecordBatch:
        n = len(keys)
        const = lambda v: pa.repeat(pa.scalar(v, pa.string()), n)  # noqa: E731
        encoded = pc.replace_substring(keys, " ", "+")  # our keys need no other encoding
        columns = [
            const(settings.image_bucket),
            encoded,
            sizes.cast(pa.string()),
            const(stamp),
            etags,
            const("STANDARD"),
        ]
        return pa.RecordBatch.from_arrays(columns, names=[f"c{i}" for i in range(len(columns))])

    def chunks():
        for start in range(0, old, _CHUNK):
            stop = min(start + _CHUNK, old)
            yield text_batch(old_keys(start, stop), pa.array(np.full(stop - start, 20_000)), old_etags(start, stop))
        yield text_batch(pa.array(new_rows["key"]), pa.array(new_rows["size"]), pa.array(new_rows["e_tag"]))

    per_file = 5_000_000
    pending = chunks()
    done = False
    while not done:
        key = f"{root}/data/scale-{len(files):04d}.csv.gz"
        path = os.path.join(store.root, settings.inventory_bucket, *key.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rows = 0
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as out:
            while rows < per_file:
                batch = next(pending, None)
                if batch is None:
                    done = True
                    break
                text = pa.BufferOutputStream()
                pcsv.write_csv(batch, text, _CSV_OPTIONS)
                out.write(text.getvalue())
                rows += batch.num_rows
        with open(path, "rb") as f:
            files.append(
                {"key": key, "size": os.path.getsize(path), "MD5checksum": hashlib.file_digest(f, "md5").hexdigest()}
            )
    folder = f"{root}/{TODAY.strftime(REPORT_FOLDER_FORMAT)}"
    manifest = json.dumps({
        "sourceBucket": settings.image_bucket, "destinationBucket": f"arn:aws:s3:::{settings.inventory_bucket}",
        "version": "2016-11-30", "creationTimestamp": str(int(TODAY.timestamp() * 1000)), "fileFormat": "CSV",
        "fileSchema": FILE_SCHEMA, "files": files,
    }, indent=2).encode()  # fmt: skip
    store.put_bytes(settings.inventory_bucket, f"{folder}/manifest.json", manifest)
    store.put_bytes(
        settings.inventory_bucket, f"{folder}/manifest.checksum", hashlib.md5(manifest).hexdigest().encode()
    )
    log(f"  report of {objects:,} rows in {len(files)} file(s): {time.perf_counter() - started:.0f}s")

    # The previous date's qualified_objects: every old object final (already indexed).
    def previous_batches():
        for start in range(0, old, _CHUNK):
            stop = min(start + _CHUNK, old)
            n = stop - start
            yield pa.RecordBatch.from_pydict(
                {
                    "bucket": pa.repeat(pa.scalar(settings.image_bucket), n), "key": old_keys(start, stop),
                    "version_id": pa.nulls(n, pa.string()), "size": pa.array(np.full(n, 20_000)),
                    "e_tag": old_etags(start, stop), "qualified": pa.array(np.zeros(n, bool)),
                    "reason": pa.repeat(pa.scalar("already_indexed"), n), "detail": pa.repeat(pa.scalar(""), n),
                    "user_id": pa.nulls(n, pa.string()), "properties_ref": pa.nulls(n, pa.string()),
                },
                schema=QUALIFIED_SCHEMA,
            )  # fmt: skip

    previous = PREVIOUS.date().isoformat()
    write_table(store, settings.table_location("qualified_objects", previous),
                QUALIFIED_SCHEMA, previous_batches())  # fmt: skip
    log(f"  previous date's table: {time.perf_counter() - started:.0f}s")

    # The history: every old object indexed with its ETag.
    with sqlite3.connect(history_path) as conn:
        uri_prefix = f"s3://{settings.image_bucket}/"
        for start in range(0, old, _CHUNK):
            stop = min(start + _CHUNK, old)
            conn.executemany(
                "INSERT INTO import_history (object_uri, version_id, etag, status, user_id, owner, updated_at)"
                " VALUES (?, 'null', ?, 'indexed', ?, 'previous-run', 1)",
                zip((uri_prefix + k for k in old_keys(start, stop).to_pylist()), old_etags(start, stop).to_pylist(),
                    (f"old-{i}" for i in range(start, stop))),
            )  # fmt: skip
    log(f"  history of {old:,} records: {time.perf_counter() - started:.0f}s")
    return {"objects": objects, "new": new, "partition": TODAY.date().isoformat(), "previous": previous}


def _bulk_load_job():
    from rivbulk_pipeline.definitions import defs

    return defs.resolve_job_def("bulk_load_job")


def run_daily(home: str, partition: str, previous: bool = True, executor: str = "") -> dict:
    """Run bulk_load_job for `partition` and return per-asset seconds and counts. `executor`
    empty: the job's own executor; `in_process` / `multiprocess`: that one, chosen by run config
    (a run as the daemon or `dagster job execute` launches it, on a temporary instance)."""
    os.environ.update(scale_env(home))
    import dagster as dg

    if not previous:  # the same day as if the previous date had never been loaded
        settings = _settings(home)
        store = store_for(settings)
        for asset in ("qualified_objects", "indexed_users"):
            loc = settings.table_location(asset, (TODAY - timedelta(days=1)).date().isoformat())
            path = os.path.join(store.root, loc.bucket, *loc.key.split("/"))
            if os.path.exists(path):
                os.rename(path, path + ".hidden")
    dagster_home = os.path.join(home, "dagster_home")
    shutil.rmtree(dagster_home, ignore_errors=True)
    os.makedirs(dagster_home)
    instance = dg.DagsterInstance.local_temp(tempdir=dagster_home)
    instance.add_dynamic_partitions("inventory_dates", [partition])
    run_config = {"execution": {"config": {executor: {}}}} if executor else {}
    samples: list[tuple[float, int]] = []  # (time, RSS): which step holds the peak
    sampling = threading.Event()

    def sample() -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not sampling.wait(0.1):
            with open("/proc/self/statm") as statm:
                samples.append((time.time(), int(statm.read().split()[1]) * page))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with dg.execute_job(
        dg.reconstructable(_bulk_load_job), instance, run_config=run_config, tags={"dagster/partition": partition}
    ) as result:
        success, run_id = result.success, result.run_id
        materializations = result.get_asset_materialization_events()
    total = time.perf_counter() - started
    sampling.set()
    starts, ends = {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            ends[event.step_key] = entry.timestamp
    metadata = {}
    for mat in materializations:
        name = mat.asset_key.path[-1]
        metadata[name] = {k: getattr(v, "value", v) for k, v in mat.materialization.metadata.items()}
    q = metadata.get("qualified_objects", {})
    steps = {key: ends[key] - starts[key] for key in starts if key in ends}
    step_rss = {key: max((rss for at, rss in samples if starts[key] <= at <= ends[key]), default=0) for key in steps}
    return {
        "success": success,
        "total_seconds": total,
        "asset_seconds": {a: steps[a] for a in ASSETS if a in steps},
        "check_seconds": sum(seconds for key, seconds in steps.items() if key not in ASSETS),
        "step_peak_rss_bytes": step_rss,
        "history_lookups": q.get("history_lookups"),
        "history_keys": q.get("history_keys_asked"),
        "decided_by_previous_date": q.get("decided_by_previous_date"),
        "tag_reads": q.get("tag_reads"),
        "indexed": metadata.get("indexed_users", {}).get("outcome_indexed"),
        "candidates": q.get("dagster/row_count"),
    }


def measure_size(
    workdir: str, objects: int, log: Callable[[str], None] = print, previous: bool = True, executor: str = ""
) -> dict:
    """Build a bucket of `objects` and run its daily job in a fresh process; figures + peak RSS."""
    home = os.path.join(workdir, f"scale-{objects}")
    log(f"  building {objects:,} objects ...")
    started = time.perf_counter()
    built = build(home, objects, log=log)
    build_seconds = time.perf_counter() - started
    log(f"  daily run of {objects:,} objects ({built['new']:,} new) ...")
    command = [sys.executable, "-m", "benchmarks._launch", sys.executable, "-m", "benchmarks.scale", "run", home]
    command += [built["partition"], *([] if previous else ["--no-previous"])]
    command += ["--executor", executor] if executor else []
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    figures = {**lines[-2], **lines[-1], "objects": objects, "new": built["new"], "build_seconds": build_seconds}
    if not figures["success"]:
        raise RuntimeError(f"the daily run of {objects:,} objects failed")
    return figures


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daily job on a built home (prints one JSON line)")
    run.add_argument("home")
    run.add_argument("partition")
    run.add_argument("--no-previous", action="store_true")
    run.add_argument("--executor", default="", choices=["", "in_process", "multiprocess"])
    one = sub.add_parser("measure", help="build and run one size")
    one.add_argument("workdir")
    one.add_argument("objects", type=int)
    one.add_argument("--no-previous", action="store_true")
    one.add_argument("--executor", default="", choices=["", "in_process", "multiprocess"])
    args = parser.parse_args(argv)
    if args.command == "run":
        figures = run_daily(args.home, args.partition, previous=not args.no_previous, executor=args.executor)
        print(json.dumps(figures), flush=True)
    else:
        print(
            json.dumps(measure_size(args.workdir, args.objects, previous=not args.no_previous, executor=args.executor))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
