"""`rivbulk inventory` on the local store: the whole command, process start included.

A bucket of hand-copied files (distinct small PNGs, a thousand per folder, as a developer makes
test data at scale) is listed twice: first never listed (no ETag cached: every file is read and
hashed), then already listed (ETags cached: a stat per file). Each run is the real command in
its own process; its report is then read back through the inventory reader and checked against
the files themselves (row count, and the ETag and size of a sample of files).

    python -m benchmarks.listing 100000 [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Optional

from rivbulk_pipeline.cli.demo import face_image
from rivbulk_pipeline.core.inventory.reader import iter_inventory_batches, load_manifest
from rivbulk_pipeline.core.inventory.reports import report_folders
from rivbulk_pipeline.resources.deployment import store_for
from rivbulk_pipeline.settings import Settings

from .scale import distinct_png

PER_FOLDER = 1000
SAMPLE = 1000


def _settings(home: str) -> Settings:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVBULK_")}
    return Settings.from_env({**env, "RIVBULK_HOME": home})


def file_key(n: int) -> str:
    return f"people/{n // PER_FOLDER:05d}/{n:08d}.png"


def _write_folder(bucket_dir: str, start: int, stop: int) -> None:
    base = face_image(7, size=96)
    os.makedirs(os.path.join(bucket_dir, os.path.dirname(file_key(start))), exist_ok=True)
    for n in range(start, stop):
        with open(os.path.join(bucket_dir, file_key(n)), "wb") as out:
            out.write(distinct_png(base, n))


def build_bucket(home: str, objects: int) -> None:
    """`objects` plain files in the image bucket's folder, written as `cp` would: the store never saw them."""
    shutil.rmtree(home, ignore_errors=True)
    settings = _settings(home)
    bucket_dir = os.path.join(settings.local_store_root, settings.image_bucket)
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        starts = range(0, objects, PER_FOLDER)
        list(
            pool.map(_write_folder, [bucket_dir] * len(starts), starts, [min(s + PER_FOLDER, objects) for s in starts])
        )


def run_command(home: str) -> tuple[float, int]:
    """(wall seconds, peak RSS) of one `rivbulk inventory` in a fresh process."""
    rivbulk = shutil.which("rivbulk", path=os.path.dirname(sys.executable)) or "rivbulk"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVBULK_")}
    env["RIVBULK_HOME"] = home
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._launch", rivbulk, "inventory"],
        env=env, stdout=subprocess.PIPE, check=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_bytes"]


def check_report(home: str, objects: int) -> None:
    """The latest report lists every file once, with the MD5 and size of a sample of them."""
    settings = _settings(home)
    store = store_for(settings)
    folder = report_folders(store, settings.inventory_bucket, settings.report_root)[-1]
    manifest = load_manifest(store, settings.inventory_bucket, f"{settings.report_root}/{folder.name}")
    sample = set(random.Random(objects).sample(range(objects), min(SAMPLE, objects)))
    wanted = {file_key(n) for n in sample}
    rows, seen = 0, {}
    for batch in iter_inventory_batches(store, manifest):
        rows += batch.num_rows
        for key, size, etag in zip(*(batch.column(c).to_pylist() for c in ("key", "size", "e_tag"))):
            if key in wanted:
                seen[key] = (size, etag)
    if rows != objects:
        raise AssertionError(f"the report lists {rows:,} objects, the bucket holds {objects:,}")
    for key in wanted:
        body = open(os.path.join(settings.local_store_root, settings.image_bucket, key), "rb").read()
        if seen.get(key) != (len(body), hashlib.md5(body).hexdigest()):
            raise AssertionError(
                f"{key}: the report says {seen.get(key)}, the file is {len(body)} bytes, MD5"
                f" {hashlib.md5(body).hexdigest()}"
            )


def measure_listing(workdir: str, objects: int, log: Callable[[str], None] = print) -> dict:
    home = os.path.join(workdir, f"listing-{objects}")
    started = time.perf_counter()
    build_bucket(home, objects)
    log(f"  {objects:,} hand-copied files: {time.perf_counter() - started:.0f}s")
    result: dict = {"objects": objects, "load_before": os.getloadavg()[0]}
    for case in ("never_listed", "already_listed"):
        seconds, rss = run_command(home)
        check_report(home, objects)
        result[case] = {"seconds": seconds, "objects_per_s": objects / seconds, "peak_rss_bytes": rss}
        log(
            f"  {case.replace('_', ' ')}: {seconds:.1f}s, {objects / seconds:,.0f} objects/s, peak RSS"
            f" {rss / 1e6:,.0f} MB (report checked)"
        )
    result["load_after"] = os.getloadavg()[0]
    shutil.rmtree(home, ignore_errors=True)
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.listing", description=__doc__.splitlines()[0])
    parser.add_argument("objects", type=int, nargs="+")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    workdir = args.workdir or os.path.join("/tmp", "rivbulk-bench-listing")
    for objects in args.objects:
        print(json.dumps(measure_listing(workdir, objects)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
