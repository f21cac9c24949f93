"""The demo data, as the definitions' tests load it: created once per test under a temporary home."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg
import pytest

from rivbulk_pipeline.cli.demo import create_demo
from rivbulk_pipeline.core.inventory.reports import report_folders
from rivbulk_pipeline.defs.partitions import inventory_dates
from rivbulk_pipeline.resources.deployment import build_resources
from rivbulk_pipeline.settings import Settings
from rivbulk_pipeline_tests.support.clock import NOW


class Demo(NamedTuple):
    settings: Settings
    home: Path
    resources: dict[str, Any]
    dates: list[str]  # the inventory dates of its reports, oldest first


@pytest.fixture
def demo_now() -> datetime:
    """When the demo data is created (a module overrides it to move the demo's dates)."""
    return NOW


@pytest.fixture
def demo(local_settings: Settings, demo_now: datetime) -> Demo:
    """The demo data under the temporary home, the resources over it and its dates."""
    home = create_demo(local_settings, now=demo_now)
    resources = build_resources(local_settings)
    folders = report_folders(resources["store"], local_settings.inventory_bucket, local_settings.report_root)
    return Demo(local_settings, home, resources, sorted({f.inventory_date for f in folders}))


@pytest.fixture
def instance(demo: Demo) -> dg.DagsterInstance:
    """An ephemeral instance that knows the demo's dates as partitions."""
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(inventory_dates.name, demo.dates)
    return instance
