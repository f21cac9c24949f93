"""Demo data for the local default: an image bucket with every case the rules know, and
S3 Inventory reports for three past dates and today.

`DEMO_CASES` says what each object must end as; the tests hold the pipeline to it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Callable, Optional

from PIL import Image, ImageDraw

from ..resources.deployment import store_for
from ..resources.gateway import LocalRegistryGateway
from ..settings import Settings
from .inventory import write_report

OTHER_BUCKET = "rivbulk-elsewhere"


def face_image(seed: int, image_format: str = "PNG", size: int = 160) -> bytes:
    """A real, decodable picture of a cartoon face; `seed` makes each one distinct: the background
    colour is an odd multiple of the seed modulo 2**24 (one colour per seed below 16.7M)."""
    rgb = (seed * 0x9E3779) & 0xFFFFFF
    background = (rgb >> 16, (rgb >> 8) & 0xFF, rgb & 0xFF)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    s = size
    draw.ellipse((s * 0.2, s * 0.15, s * 0.8, s * 0.9), fill=(236, 200, 160))
    draw.ellipse((s * 0.33, s * 0.38, s * 0.43, s * 0.46), fill=(40, 40, 40))
    draw.ellipse((s * 0.57, s * 0.38, s * 0.67, s * 0.46), fill=(40, 40, 40))
    draw.arc((s * 0.35, s * 0.55, s * 0.65, s * 0.75), 20, 160, fill=(150, 40, 40), width=3)
    draw.text((4, 4), str(seed), fill=(255, 255, 255) if sum(background) < 384 else (0, 0, 0))
    out = io.BytesIO()
    image.save(out, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return out.getvalue()


@dataclass(frozen=True)
class DemoCase:
    key: str
    body: Callable[[], bytes]
    tags: dict = field(default_factory=dict)
    expect: str = (
        "indexed"  # "indexed" | "<qualification reason>" | "failed:<gateway reason prefix>" | "not_candidate:<why>"
    )
    days_ago: int = 3  # the object appears in reports from that day on


def _props(user: str) -> str:
    return f"s3://{{image_bucket}}/properties/{user}.json"


DEMO_CASES: list[DemoCase] = [
    DemoCase("alice/portrait.png", lambda: face_image(1), {"UserId": "alice", "Properties": _props("alice")}),
    DemoCase("bob/Photo.JPG", lambda: face_image(2, "JPEG"), {"userid": "bob"}),
    DemoCase(
        "carol/face.jpeg", lambda: face_image(3, "JPEG"), {"UserId": "carol", "Properties": _props("carol")}, days_ago=2
    ),
    DemoCase("dave smith/photo 1.JPEG", lambda: face_image(4, "JPEG"), {"UserId": "dave.smith"}, days_ago=2),
    DemoCase("eve+frank/a+b.png", lambda: face_image(5), {"USERID": "eve-frank"}, days_ago=1),
    DemoCase("percent/100%real.PNG", lambda: face_image(6), {"UserId": "percy"}, days_ago=1),
    DemoCase("ünïcødé/李 小龍.png", lambda: face_image(7), {"UserId": "Li.XiaoLong"}, days_ago=0),
    DemoCase("noid/portrait.png", lambda: face_image(8), {"Department": "sales"}, "no_user_id"),
    DemoCase("ignored/portrait.png", lambda: face_image(9), {"UserId": "ignored", "ignore": "TRUE"}, "ignored"),
    DemoCase("tagged/portrait.png", lambda: face_image(10), {"UserId": "tagged", "Indexed": "true"}, "indexed_tag"),
    DemoCase("falsemarker/portrait.png", lambda: face_image(11), {"UserId": "grace", "Ignore": "false"}),
    DemoCase(
        "badprops/portrait.png",
        lambda: face_image(12),
        {"UserId": "heidi", "Properties": _props("heidi")},
        "bad_properties",
    ),
    DemoCase(
        "missingprops/portrait.png",
        lambda: face_image(13),
        {"UserId": "ivan", "Properties": _props("nobody")},
        "properties_not_found",
    ),
    DemoCase(
        "elsewhere/portrait.png",
        lambda: face_image(14),
        {"UserId": "judy", "Properties": f"s3://{OTHER_BUCKET}/judy.json"},
        "properties_not_allowed",
    ),
    DemoCase("longid/portrait.png", lambda: face_image(15), {"UserId": "x" * 129}, "bad_user_id"),
    DemoCase("corrupt/broken.jpg", lambda: face_image(16, "JPEG")[:600], {"UserId": "mallory"}, "failed:corrupt_image"),
    DemoCase(
        "fake/notreally.png",
        lambda: b"this is a text file, not a PNG\n" * 40,
        {"UserId": "niaj"},
        "failed:unsupported_format",
    ),
    DemoCase("tiny/small.png", lambda: face_image(17, size=40), {"UserId": "oscar"}, "failed:too_small"),
    # A second image of a registered user is a second face, as RIV stores it.
    DemoCase("olivia/new-photo.png", lambda: face_image(18), {"UserId": "olivia"}),
    DemoCase("trudy/stolen.png", lambda: face_image(19), {"UserId": "trudy"}, "failed:UserAlreadyExists"),
    # RIV indexes only ids matching Rekognition's ExternalImageId: refused before any call.
    DemoCase("email/portrait.png", lambda: face_image(21), {"UserId": "bob@example.com"}, "bad_user_id", days_ago=0),
    # RIV's request mapping cannot take an apostrophe: refused before the call, with a reason to act on.
    DemoCase(
        "tim/portrait.png",
        lambda: face_image(22),
        {"UserId": "tim", "Properties": _props("tim")},
        "failed:apostrophe_in_request",
    ),
    DemoCase("notes/readme.txt", lambda: b"Faces go in per-user folders.\n", {}, "not_candidate:not_an_image"),
    DemoCase(
        "properties/alice.json",
        lambda: json.dumps({"fname": "Alice", "team": "Blue"}).encode(),
        {},
        "not_candidate:not_an_image",
    ),
    DemoCase(
        "properties/carol.json", lambda: json.dumps({"fname": "Carol"}).encode(), {}, "not_candidate:not_an_image"
    ),
    DemoCase(
        "properties/tim.json", lambda: json.dumps({"surname": "O'Reilly"}).encode(), {}, "not_candidate:not_an_image"
    ),
    DemoCase(
        "properties/heidi.json", lambda: json.dumps(["not", "a", "mapping"]).encode(), {}, "not_candidate:not_an_image"
    ),
]

# Users the registry knows before the demo starts: olivia with another face; someone with trudy's face.
PREREGISTERED = [("olivia", 20), ("victor", 19)]
REPORT_DAYS = [(3, "CSV"), (2, "Parquet"), (1, "ORC"), (0, "CSV")]


def create_demo(settings: Settings, now: Optional[datetime] = None) -> Path:
    """Write the demo bucket, the registry's existing users and the inventory reports under settings.home."""
    now = (now or datetime.now(timezone.utc)).replace(second=0, microsecond=0)
    home = settings.home_path
    store = store_for(settings)

    def backdate(key: str, appeared: datetime) -> None:  # the local store's Last-Modified is the file's mtime
        os.utime(settings.local_store_root / settings.image_bucket / key, (appeared.timestamp(), appeared.timestamp()))

    populate_images(store, settings, now, backdate)
    preregister(LocalRegistryGateway(db_path=str(settings.local_registry_path)))
    for days_ago, file_format in REPORT_DAYS:
        created_at = (
            now
            if days_ago == 0
            else datetime.combine((now - timedelta(days=days_ago)).date(), time(1, 0), timezone.utc)
        )
        write_report(store, settings, created_at, file_format)
    return home


def populate_images(
    store, settings: Settings, now: datetime, backdate: Optional[Callable[[str, datetime], None]] = None
) -> None:
    """Put every demo case into the image bucket of any store, with its tags."""
    for bucket in (settings.image_bucket, settings.inventory_bucket, OTHER_BUCKET):
        store.create_bucket(bucket)
    store.put_bytes(OTHER_BUCKET, "judy.json", json.dumps({"fname": "Judy"}).encode())
    for case in DEMO_CASES:
        tags = {k: v.format(image_bucket=settings.image_bucket) for k, v in case.tags.items()}
        store.put_bytes(settings.image_bucket, case.key, case.body())
        if tags:
            store.put_tags(settings.image_bucket, case.key, tags)
        if backdate:
            appeared = datetime.combine((now - timedelta(days=case.days_ago)).date(), time(0, 30), timezone.utc)
            backdate(case.key, min(appeared, now - timedelta(minutes=1)))


def preregister(gateway) -> None:
    """Users the registry knows before the demo: olivia with another face, victor with trudy's."""
    for user_id, seed in PREREGISTERED:
        result = gateway.register(user_id, face_image(seed), {})
        if result.outcome.value != "indexed":
            raise RuntimeError(f"could not pre-register demo user {user_id}: {result.reason}")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    if settings.deployment != "local":
        print("rivbulk demo writes the local default's data; unset RIVBULK_DEPLOYMENT", file=sys.stderr)
        return 2
    home = settings.home_path
    if settings.local_store_root.exists():
        if not args.force:
            print(f"demo data already in {home} (use --force to recreate it)")
            return 0
        for path in settings.local_layout:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    create_demo(settings)
    print(f"demo data written to {home}")
    return 0
