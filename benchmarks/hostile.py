"""The hostile date (issue 17): the peak RSS of the qualification step and of the indexing step
over a date holding a 500 MB properties file, a 100 MB image and a PNG that declares 88
megapixels in about 340 KB, beside normal objects, on the local default.

The large files are sparse (they take no disk); the PNG is real, its pixel data a zlib stream of
identical scanlines. Each step runs in a fresh process (`python -m benchmarks.hostile step ...`
under `benchmarks._launch`), so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from datetime import datetime, timezone
from typing import Callable, Optional

IMAGE_BUCKET = "rivbulk-images"
PROPERTIES_BUCKET = "rivbulk-props"
PROPERTIES_BYTES = 500 * 1024 * 1024
IMAGE_BYTES = 100 * 1024 * 1024
BOMB_SIDES = (11_000, 8_000)  # 88 megapixels, RGBA: 352 MB once decoded
# key -> (user, what the date must end with for it)
HOSTILE = {
    "people/props-500mb.png": ("props_big", "qualify:bad_properties"),
    "people/image-100mb.png": ("image_big", "qualify:too_large"),
    "people/bomb-88mp.png": ("bomb", "index:failed_permanent:too_large"),
}
STEPS = ("qualified_objects", "indexed_users")


def declared_png(width: int, height: int) -> bytes:
    """A valid RGBA PNG of one colour: every scanline is the same, so zlib shrinks the pixel
    data about a thousandfold (88 megapixels fit in about 340 KB). Built row by row: the
    decoded image is never in memory here."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" + b"\x80\x80\x80\xff" * width  # filter type 0, then grey opaque pixels
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def hostile_env(home: str) -> dict[str, str]:
    return {
        "RIVBULK_HOME": home,
        "RIVBULK_IMAGE_BUCKET": IMAGE_BUCKET,
        "RIVBULK_ALLOWED_PROPERTY_BUCKETS": PROPERTIES_BUCKET,
        "RIVBULK_INDEX_RATE": "1000",
    }


def _settings(home: str):
    from rivbulk_pipeline.settings import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVBULK_")}
    return Settings.from_env({**env, **hostile_env(home)})


def _sparse(path: str, size: int, head: bytes = b"") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


def build(home: str, normal: int) -> str:
    """The store of `home` with `normal` tagged face images and the three hostile objects, and
    the inventory report of that date; returns the date."""
    from rivbulk_pipeline.cli.demo import face_image
    from rivbulk_pipeline.cli.inventory import write_report
    from rivbulk_pipeline.resources.deployment import store_for

    settings = _settings(home)
    store = store_for(settings)
    for bucket in (IMAGE_BUCKET, PROPERTIES_BUCKET, settings.inventory_bucket):
        store.create_bucket(bucket)
    for n in range(normal):
        key, user = f"people/normal-{n:04d}.png", f"user{n:04d}"
        store.put_bytes(IMAGE_BUCKET, key, face_image(1000 + n))
        store.put_bytes(PROPERTIES_BUCKET, f"{user}.json", json.dumps({"team": "blue"}).encode())
        store.put_tags(IMAGE_BUCKET, key, {"UserId": user, "Properties": f"s3://{PROPERTIES_BUCKET}/{user}.json"})
    root = os.path.join(str(settings.local_store_root), IMAGE_BUCKET)
    _sparse(
        os.path.join(str(settings.local_store_root), PROPERTIES_BUCKET, "big", "props.json"),
        PROPERTIES_BYTES,
        b'{"a": "',
    )
    store.put_bytes(IMAGE_BUCKET, "people/props-500mb.png", face_image(7))
    _sparse(os.path.join(root, "people", "image-100mb.png"), IMAGE_BYTES, b"\x89PNG\r\n\x1a\n")
    store.put_bytes(IMAGE_BUCKET, "people/bomb-88mp.png", declared_png(*BOMB_SIDES))
    for key, (user, _) in HOSTILE.items():
        tags = {"UserId": user}
        if user == "props_big":
            tags["Properties"] = f"s3://{PROPERTIES_BUCKET}/big/props.json"
        store.put_tags(IMAGE_BUCKET, key, tags)
    created_at = datetime.now(timezone.utc)
    write_report(store, settings, created_at)
    return created_at.date().isoformat()


def run_step(home: str, date: str, asset: str) -> dict:
    """Materialize one asset of the date in this process (its upstream tables are in the store)."""
    import dagster as dg
    import pyarrow.parquet as pq

    from rivbulk_pipeline.core.steps.summary import reason_codes
    from rivbulk_pipeline.defs.assets import bulk_load_assets
    from rivbulk_pipeline.resources.deployment import build_resources

    settings = _settings(home)
    resources = build_resources(settings)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("inventory_dates", [date])
    selected = [a for a in bulk_load_assets if a.key.path[-1] == asset]
    started = time.perf_counter()
    result = dg.materialize(
        bulk_load_assets,
        selection=selected,
        partition_key=date,
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    seconds = time.perf_counter() - started
    figures: dict = {"asset": asset, "success": result.success, "seconds": seconds}
    if asset in STEPS and result.success:
        location = settings.table_location(asset, date)
        table = pq.read_table(os.path.join(str(settings.local_store_root), location.bucket, *location.key.split("/")))
        rows = table.to_pydict()
        codes = reason_codes(table.column("reason")).to_pylist()
        if asset == "qualified_objects":
            figures["outcomes"] = {k: f"qualify:{c}" for k, c in zip(rows["key"], codes)}
        else:
            figures["outcomes"] = {
                k: f"index:{o}" + (f":{c}" if o != "indexed" else "")
                for k, o, c in zip(rows["key"], rows["outcome"], codes)
            }
    return figures


def _child(home: str, date: str, asset: str) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks._launch",
        sys.executable,
        "-m",
        "benchmarks.hostile",
        "step",
        home,
        date,
        asset,
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {**lines[-2], **lines[-1]}


def measure_hostile(workdir: str, normal: int = 30, log: Callable[[str], None] = print) -> dict:
    """Build the hostile date and run its four steps, each in a fresh process; the figures of
    the qualification and indexing steps, and every object's outcome."""
    home = os.path.join(workdir, "hostile-home")
    log(f"  building {normal} normal objects and the three hostile ones ...")
    date = build(home, normal)
    steps = {}
    for asset in ("inventory_report", "batch_manifest", *STEPS):
        steps[asset] = _child(home, date, asset)
        log(f"  {asset}: success {steps[asset]['success']}, peak RSS {steps[asset]['peak_rss_bytes'] / 1e6:,.0f} MB")
    outcomes = {**steps["qualified_objects"].get("outcomes", {})}
    for key, outcome in steps["indexed_users"].get("outcomes", {}).items():
        outcomes[key] = outcome
    return {
        "normal": normal,
        "date": date,
        "steps": {a: {k: v for k, v in s.items() if k != "outcomes"} for a, s in steps.items()},
        "outcomes": outcomes,
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile")
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step", help="materialize one asset of a built home (prints one JSON line)")
    step.add_argument("home")
    step.add_argument("date")
    step.add_argument("asset")
    one = sub.add_parser("measure", help="build the hostile date and run its steps")
    one.add_argument("workdir")
    one.add_argument("--normal", type=int, default=30)
    args = parser.parse_args(argv)
    if args.command == "step":
        print(json.dumps(run_step(args.home, args.date, args.asset)), flush=True)
    else:
        print(json.dumps(measure_hostile(args.workdir, args.normal)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
