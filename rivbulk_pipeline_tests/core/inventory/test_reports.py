"""Finding complete inventory reports, and the sensor's cursor, over a real local store."""

from __future__ import annotations

import collections
import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from rivbulk_pipeline.core.errors import InventoryError
from rivbulk_pipeline.core.inventory.reader import report_root
from rivbulk_pipeline.core.inventory.reports import (
    SensorCursor,
    newest_complete_report,
    report_folders,
    scan_for_new_reports,
)
from rivbulk_pipeline.core.inventory.writer import write_inventory_report
from rivbulk_pipeline.core.model import ObjectInfo
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline_tests.support.clock import NOW

BUCKET = "inventory-bucket"
ROOT = report_root("inventory", "image-bucket", "daily")
OBJECT = ObjectInfo("image-bucket", "alice/portrait.png", 1234, "0" * 32, NOW - timedelta(days=10))


class CountingStore:
    """Passes every call to the real store and counts them by method name."""

    def __init__(self, inner: LocalObjectStore) -> None:
        self._inner = inner
        self.calls: collections.Counter = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    store = LocalObjectStore(root=str(tmp_path / "store"))
    store.create_bucket(BUCKET)
    return store


def write_report(store: LocalObjectStore, created_at: datetime, objects=(OBJECT,)) -> str:
    """A real report; returns its folder name."""
    manifest_key = write_inventory_report(
        store,
        list(objects),
        source_bucket="image-bucket",
        destination_bucket=BUCKET,
        destination_prefix="inventory",
        config_id="daily",
        created_at=created_at,
    )
    return manifest_key.split("/")[-2]


def checksum_key(folder: str) -> str:
    return f"{ROOT}/{folder}/manifest.checksum"


def remove_checksum(store: LocalObjectStore, folder: str) -> bytes:
    """Make a report incomplete, as it is while AWS is still delivering it; returns the checksum."""
    body = store.get_bytes(BUCKET, checksum_key(folder))
    store.delete(BUCKET, checksum_key(folder))
    return body


def scan(store, cursor: SensorCursor, now: datetime = NOW):
    return scan_for_new_reports(store, BUCKET, ROOT, cursor, now=now)


def names(result) -> list[str]:
    return [f.name for f in result.complete]


def test_reports_are_returned_oldest_first_and_once(store):
    newer = write_report(store, NOW - timedelta(hours=2))
    older = write_report(store, NOW - timedelta(days=1))

    first = scan(store, SensorCursor())
    assert names(first) == [older, newer]
    assert [f.inventory_date for f in first.complete] == ["2026-11-21", "2026-11-22"]
    assert first.cursor == SensorCursor(high_water=newer, pending=[], recent=[older, newer])

    assert names(scan(store, first.cursor)) == []


def test_incomplete_report_stays_pending_until_its_checksum_arrives_then_is_returned_once(store):
    done = write_report(store, NOW - timedelta(days=1))
    delivering = write_report(store, NOW - timedelta(hours=1))
    checksum = remove_checksum(store, delivering)

    first = scan(store, SensorCursor())
    assert names(first) == [done]
    assert first.cursor.pending == [delivering]
    assert first.cursor.high_water == delivering  # seen, but only as pending

    # it stays pending, tick after tick, through a round trip of the cursor text
    second = scan(store, SensorCursor.parse(first.cursor.dump()))
    assert names(second) == []
    assert second.cursor.pending == [delivering]
    with pytest.raises(InventoryError, match="no complete inventory report for 2026-11-22"):
        newest_complete_report(store, BUCKET, ROOT, "2026-11-22")

    store.put_bytes(BUCKET, checksum_key(delivering), checksum)
    third = scan(store, SensorCursor.parse(second.cursor.dump()))
    assert names(third) == [delivering]
    assert third.cursor.pending == []
    assert newest_complete_report(store, BUCKET, ROOT, "2026-11-22").name == delivering

    assert names(scan(store, third.cursor)) == []


def test_a_pending_report_is_given_up_after_a_week(store):
    stuck = write_report(store, NOW - timedelta(days=8))
    remove_checksum(store, stuck)
    result = scan(store, SensorCursor(), now=NOW)
    assert names(result) == [] and result.cursor.pending == []


def test_cursor_survives_a_deleted_report_folder_and_a_rewritten_checksum(store):
    first_folder = write_report(store, NOW - timedelta(days=2))
    second_folder = write_report(store, NOW - timedelta(days=1))
    cursor = scan(store, SensorCursor()).cursor
    assert cursor.high_water == second_folder

    # the newest folder (the high-water mark itself) is deleted; the older one's checksum rewritten
    for obj in list(store.list_objects(BUCKET, f"{ROOT}/{second_folder}/")):
        store.delete(BUCKET, obj.key)
    store.put_bytes(BUCKET, checksum_key(first_folder), store.get_bytes(BUCKET, checksum_key(first_folder)))
    assert [f.name for f in report_folders(store, BUCKET, ROOT)] == [first_folder]

    again = scan(store, cursor)
    assert names(again) == []  # no re-run of either
    assert again.cursor == cursor

    third_folder = write_report(store, NOW - timedelta(hours=1))
    later = scan(store, again.cursor)
    assert names(later) == [third_folder]


def test_newest_complete_report_of_a_date_wins(store):
    morning = write_report(store, datetime(2026, 11, 20, 1, 0, tzinfo=timezone.utc))
    evening = write_report(store, datetime(2026, 11, 20, 19, 45, tzinfo=timezone.utc))
    write_report(store, datetime(2026, 11, 21, 1, 0, tzinfo=timezone.utc))  # another date: not chosen

    assert newest_complete_report(store, BUCKET, ROOT, "2026-11-20").name == evening
    checksum = remove_checksum(store, evening)  # the newest one is still being delivered
    assert newest_complete_report(store, BUCKET, ROOT, "2026-11-20").name == morning
    store.put_bytes(BUCKET, checksum_key(evening), checksum)
    assert newest_complete_report(store, BUCKET, ROOT, "2026-11-20").name == evening

    with pytest.raises(InventoryError) as caught:
        newest_complete_report(store, BUCKET, ROOT, "2026-11-19")
    assert f"s3://{BUCKET}/{ROOT}/" in str(caught.value) and "2026-11-19" in str(caught.value)


def test_folders_that_are_not_timestamps_are_ignored(store):
    real = write_report(store, NOW - timedelta(hours=3))  # also writes data/ and hive/ under the root
    for folder in ("notes", "2026-13-01T00-00Z", "2026-11-20T08-15Z-copy", "2026-11-20", "2026-11-20T08-15"):
        store.put_bytes(BUCKET, f"{ROOT}/{folder}/manifest.json", b"{}")
        store.put_bytes(BUCKET, f"{ROOT}/{folder}/manifest.checksum", hashlib.md5(b"{}").hexdigest().encode())
    listed = {p.rstrip("/").rsplit("/", 1)[-1] for p in store.list_prefixes(BUCKET, ROOT + "/")}
    assert {"data", "hive", "notes", "2026-13-01T00-00Z"} <= listed  # they are there to be ignored

    assert [f.name for f in report_folders(store, BUCKET, ROOT)] == [real]
    result = scan(store, SensorCursor())
    assert names(result) == [real]
    assert result.cursor == SensorCursor(high_water=real, pending=[], recent=[real])


def test_three_hundred_reports_one_scan_returns_all_the_next_only_lists(store):
    start = datetime(2026, 8, 1, 1, 0, tzinfo=timezone.utc)
    written = [write_report(store, start + timedelta(hours=7 * i), objects=()) for i in range(300)]
    counting = CountingStore(store)

    first = scan(counting, SensorCursor())
    assert names(first) == sorted(written) and len(set(written)) == 300
    assert counting.calls["exists"] == 300  # each new report checked once

    counting.calls.clear()
    second = scan(counting, SensorCursor.parse(first.cursor.dump()))
    assert names(second) == []
    assert set(counting.calls) == {"list_prefixes"}  # no call per old report
    assert counting.calls["list_prefixes"] <= 1


def test_sensor_cursor_text_round_trips_and_empty_means_fresh():
    assert SensorCursor.parse(None) == SensorCursor() == SensorCursor.parse("")
    cursor = SensorCursor(high_water="2026-11-22T01-00Z", pending=["2026-11-21T01-00Z"])
    assert SensorCursor.parse(cursor.dump()) == cursor


def test_a_report_delivered_late_with_an_older_name_is_still_found(tmp_path):
    from rivbulk_pipeline.core.inventory.reports import SensorCursor, scan_for_new_reports

    store = LocalObjectStore(root=str(tmp_path / "late"))
    store.create_bucket("inventory")
    root = "inv/images/daily"
    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    for folder in ("2026-11-20T01-00Z", "2026-11-22T01-00Z"):
        store.put_bytes("inventory", f"{root}/{folder}/manifest.checksum", b"x")
    first = scan_for_new_reports(store, "inventory", root, SensorCursor(), now=now)
    assert [f.name for f in first.complete] == ["2026-11-20T01-00Z", "2026-11-22T01-00Z"]

    store.put_bytes("inventory", f"{root}/2026-11-21T01-00Z/manifest.checksum", b"x")  # arrives late
    late = scan_for_new_reports(store, "inventory", root, SensorCursor.parse(first.cursor.dump()), now=now)
    assert [f.name for f in late.complete] == ["2026-11-21T01-00Z"]
    assert scan_for_new_reports(store, "inventory", root, late.cursor, now=now).complete == []
