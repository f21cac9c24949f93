"""Finding inventory reports in the destination bucket, and the sensor's cursor."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

from ..errors import InventoryError
from ..ports import ObjectStore
from .reader import parse_report_folder


@dataclass(frozen=True, order=True)
class ReportFolder:
    """One delivery: <root>/YYYY-MM-DDTHH-MMZ/."""

    name: str  # the timestamp folder name; sorts chronologically
    started_at: datetime

    @property
    def inventory_date(self) -> str:
        return self.started_at.date().isoformat()


def report_folders(store: ObjectStore, bucket: str, root: str) -> list[ReportFolder]:
    """Every timestamp folder under the report root (one listing call per 1,000 folders)."""
    folders = []
    for prefix in store.list_prefixes(bucket, root.rstrip("/") + "/"):
        name = prefix.rstrip("/").rsplit("/", 1)[-1]
        started_at = parse_report_folder(name)
        if started_at is not None:
            folders.append(ReportFolder(name, started_at))
    return sorted(folders)


def is_complete(store: ObjectStore, bucket: str, root: str, folder: ReportFolder) -> bool:
    """AWS writes manifest.checksum last: its presence means the report is complete."""
    return store.exists(bucket, f"{root.rstrip('/')}/{folder.name}/manifest.checksum")


def newest_complete_report(store: ObjectStore, bucket: str, root: str, inventory_date: str) -> ReportFolder:
    """The newest complete report of that date, or InventoryError naming the location."""
    for folder in reversed(report_folders(store, bucket, root)):
        if folder.inventory_date == inventory_date and is_complete(store, bucket, root, folder):
            return folder
    raise InventoryError(f"s3://{bucket}/{root}/", f"no complete inventory report for {inventory_date}")


def newest_complete(store: ObjectStore, bucket: str, root: str) -> Optional[ReportFolder]:
    """The newest complete report of any date, or None when there is none."""
    for folder in reversed(report_folders(store, bucket, root)):
        if is_complete(store, bucket, root, folder):
            return folder
    return None


@dataclass
class SensorCursor:
    """Every folder up to `high_water` was seen; `pending` were seen incomplete and are checked
    again; `recent` are the complete ones of the last week, so that a folder delivered late with
    an older name than `high_water` is still noticed."""

    high_water: str = ""
    pending: list[str] = field(default_factory=list)
    recent: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: Optional[str]) -> "SensorCursor":
        if not text:
            return cls()
        value = json.loads(text)
        return cls(value.get("high_water", ""), list(value.get("pending", [])), list(value.get("recent", [])))

    def dump(self) -> str:
        return json.dumps(
            {"high_water": self.high_water, "pending": self.pending, "recent": self.recent}, sort_keys=True
        )


@dataclass(frozen=True)
class ScanResult:
    complete: list[ReportFolder]  # new since the cursor, oldest first
    cursor: SensorCursor


def scan_for_new_reports(
    store: ObjectStore,
    bucket: str,
    root: str,
    cursor: SensorCursor,
    now: Optional[datetime] = None,
    give_up_after: timedelta = timedelta(days=7),
) -> ScanResult:
    """New complete reports since the cursor. Only folders past the high-water mark or pending
    are checked, so a tick costs one listing however many reports exist. Names, not positions,
    are remembered, so deleted or rewritten keys never shift the cursor."""
    now = now or datetime.now(timezone.utc)
    recent = set(cursor.recent)

    def in_window(folder: ReportFolder) -> bool:
        return now - folder.started_at < give_up_after

    candidates = [
        f
        for f in report_folders(store, bucket, root)
        if f.name > cursor.high_water or f.name in cursor.pending or (in_window(f) and f.name not in recent)
    ]
    complete, pending = [], []
    for folder in candidates:
        if is_complete(store, bucket, root, folder):
            complete.append(folder)
        elif in_window(folder):
            pending.append(folder.name)
    high_water = max([cursor.high_water] + [f.name for f in candidates])
    still_recent = sorted(
        name
        for name in recent | {f.name for f in complete}
        if (started := parse_report_folder(name)) is not None and now - started < give_up_after
    )
    return ScanResult(complete, SensorCursor(high_water, sorted(pending), still_recent))
