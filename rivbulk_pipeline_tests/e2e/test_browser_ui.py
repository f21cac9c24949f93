"""The Dagster UI in a real browser over the demo data: `rivbulk dev`, the sensor loads the newest
date, a backfill from Jobs -> bulk_load_job loads the oldest, the summary follows by itself; then
headless Chromium (Debian's `chromium`, driven by Playwright) finds the failed-rows table with its
five reasons on indexed_users and the summary's table.

Run with `make test-browser` (marker `browser`, not part of `make test`). Without Chromium it
skips, except in CI (CI=true), where it fails. With RIVBULK_SCREENSHOTS=<folder> it also saves
the README's screenshots there (`make screenshots` writes docs/ui/).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import pyarrow.parquet as pq
import pytest

from rivbulk_pipeline.core.inventory.reports import report_folders
from rivbulk_pipeline.resources.object_store import LocalObjectStore
from rivbulk_pipeline.settings import Settings
from rivbulk_pipeline_tests.support.dev_server import (
    LAUNCH_BACKFILL,
    POLL_SECONDS,
    DevServer,
    finished_backfill,
    finished_sensor_run,
)
from rivbulk_pipeline_tests.support.waiting import wait_for

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("RIVBULK_CHROMIUM", "/usr/bin/chromium")
FIVE_REASONS = ["UserAlreadyExists", "apostrophe_in_request", "corrupt_image", "too_small", "unsupported_format"]
TOTAL_SECONDS = 480
VIEWPORT = {"width": 2200, "height": 1250}  # wide enough for the summary's ten columns...
SCALE = 0.75  # ...saved at 1650 x 938 pixels


def _browser_or_skip() -> Any:
    """Playwright's sync API with Debian's Chromium; never a downloaded browser."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem, sync_playwright = "playwright is not installed (pip install -e '.[dev]')", None
    if problem is None and not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        problem = f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test in CI: {problem}")
        pytest.skip(problem)
    return sync_playwright


def _launch_job_backfill(server: DevServer, partitions: list[str]) -> str:
    """What Jobs -> bulk_load_job -> Partitions -> Launch backfill sends: attributed to the job."""
    params = {
        "selector": {
            "partitionSetName": "bulk_load_job_partition_set",
            "repositorySelector": {"repositoryLocationName": "rivbulk", "repositoryName": "__repository__"},
        },
        "partitionNames": partitions,
        "title": "browser test: the oldest date",
    }
    result = server.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def _summary_covering(path: Path, date: str) -> Optional[dict[str, Any]]:
    """The stored summary, once it has been rebuilt after `date` was loaded."""
    if not path.exists():
        return None
    rows = {r["inventory_date"]: r for r in pq.read_table(path).to_pylist()}
    row = rows.get(date)
    return rows if row and row["note"] != "not loaded yet" else None


class Ui:
    def __init__(self, page: Any, base: str, shots: Optional[Path]) -> None:
        self.page, self.base, self.shots = page, base, shots

    def open(self, path: str, wait_for_text: str) -> None:
        self.page.goto(self.base + path)
        self.page.get_by_text(wait_for_text, exact=True).first.wait_for(timeout=60_000)
        self.page.wait_for_timeout(1500)  # let the remaining panels render before any screenshot
        self.dismiss_prompt()

    def dismiss_prompt(self) -> None:
        skip = self.page.get_by_role("button", name="Skip")  # Dagster's newsletter prompt, shown once
        if skip.count():
            skip.click()
            self.page.wait_for_timeout(300)

    def shot(self, name: str, top: Optional[str] = None) -> None:
        """Save a screenshot, scrolled so that the text `top` is at the top when given."""
        if self.shots:
            if top:
                self.page.get_by_text(top, exact=True).first.evaluate("e => e.scrollIntoView({block: 'start'})")
                self.page.wait_for_timeout(500)
            self.dismiss_prompt()
            self.page.screenshot(path=str(self.shots / f"{name}.png"))


@pytest.mark.timeout(TOTAL_SECONDS + 60)
def test_the_ui_shows_failed_rows_and_the_summary(tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    shots = Path(os.environ["RIVBULK_SCREENSHOTS"]).resolve() if os.environ.get("RIVBULK_SCREENSHOTS") else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    dagster_home.mkdir()
    deadline = time.monotonic() + TOTAL_SECONDS
    server = DevServer(home, dagster_home, tmp_path / "rivbulk-dev.log")
    try:
        settings = Settings.from_env({"RIVBULK_HOME": str(home)})
        wait_for(
            "the demo data",
            lambda: (home / "store").exists() or None,
            deadline=deadline,
            interval=POLL_SECONDS,
            server=server,
        )
        wait_for(
            "the sensor's run of the newest date",
            lambda: finished_sensor_run(server),
            deadline=deadline,
            interval=POLL_SECONDS,
            server=server,
        )
        store = LocalObjectStore(root=str(home / "store"))
        dates = sorted(
            {f.inventory_date for f in report_folders(store, settings.inventory_bucket, settings.report_root)}
        )
        newest, oldest = dates[-1], dates[0]

        backfill_id = _launch_job_backfill(server, [oldest])
        backfill = wait_for(
            f"the backfill of {oldest}",
            lambda: finished_backfill(server, backfill_id),
            deadline=deadline,
            interval=POLL_SECONDS,
            server=server,
        )
        assert backfill["status"] == "COMPLETED_SUCCESS", backfill
        summary_path = (
            home
            / "store"
            / settings.output_bucket_name
            / settings.output_prefix
            / "import_summary"
            / "import_summary.parquet"
        )
        stored = wait_for(
            "the summary after the backfill",
            lambda: _summary_covering(summary_path, oldest),
            deadline=deadline,
            interval=POLL_SECONDS,
            server=server,
        )
        assert stored[newest]["indexed"] == 9 and stored[oldest]["indexed"] == 0

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                ui = Ui(browser.new_context(viewport=VIEWPORT, device_scale_factor=SCALE).new_page(), server.url, shots)

                ui.open(f"/assets/indexed_users?view=partitions&partition={newest}", "failed_rows")
                failed_rows = ui.page.locator("tr", has=ui.page.get_by_text("failed_rows", exact=True)).first
                for reason in FIVE_REASONS:
                    assert failed_rows.get_by_text(reason, exact=True).count() == 1, reason
                assert failed_rows.get_by_text("failed_permanent", exact=True).count() == 5
                ui.shot("failed-rows")

                ui.open("/assets/import_summary?view=events", "by_date")  # the latest materialisation, full width
                by_date = ui.page.locator("tr", has=ui.page.get_by_text("by_date", exact=True)).first
                for date in (newest, oldest):
                    assert by_date.get_by_text(date, exact=True).count() == 1, date
                assert by_date.get_by_text(stored[oldest]["note"], exact=True).count() == 1  # why nobody was registered
                ui.shot("summary", top="by_date")

                if shots:  # the rest of the README's tour
                    ui.open("/asset-groups/rivbulk", "indexed_users")
                    ui.shot("asset-graph")
                    ui.open("/locations/rivbulk/jobs/bulk_load_job/partitions", "Backfill history")
                    ui.shot("job-partitions")
            finally:
                browser.close()
    except BaseException:
        print(f"---- rivbulk dev log (last lines of {server.log_path}) ----\n{server.log_tail()}")
        raise
    finally:
        server.stop()
