"""A stalled inventory is noticed: a warning on `inventory_report` when the newest complete
report is older than `inventory_max_age_hours` (S3 Inventory delivers daily or weekly).

It looks at the reports themselves, not at when the pipeline last ran, and runs every hour
(and on demand from the UI), since a stalled inventory is exactly when no load runs.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

import dagster as dg

from ..core.inventory.reports import newest_complete
from ..resources.object_store import ObjectStoreResource
from ..settings import Settings
from .assets import inventory_report

HOURLY = (dg.AutomationCondition.cron_tick_passed("0 * * * *") & ~dg.AutomationCondition.in_progress()).with_label(
    "hourly"
)


def inventory_age_result(
    settings: Settings, store: ObjectStoreResource, now: Optional[datetime] = None
) -> dg.AssetCheckResult:
    now = now or datetime.now(timezone.utc)
    limit = settings.inventory_max_age_hours
    where = store.location(settings.inventory_bucket, settings.report_root)  # the folder's path, locally
    newest = newest_complete(store, settings.inventory_bucket, settings.report_root)
    if newest is None:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"no complete inventory report under {where}",
            metadata={"report_root": dg.MetadataValue.path(where), "max_age_hours": limit},
        )
    age_hours = (now - newest.started_at).total_seconds() / 3600
    fresh = age_hours <= limit
    return dg.AssetCheckResult(
        passed=fresh,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"the newest complete report, {newest.name}, is {age_hours:.1f} h old"
            + (
                ""
                if fresh
                else f": no report for longer than {limit:g} h; is S3 Inventory still delivering to {where}?"
            )
        ),
        metadata={
            "newest_report": newest.name,
            "newest_report_age_hours": round(age_hours, 2),
            "max_age_hours": limit,
            "report_root": dg.MetadataValue.path(where),
        },
    )


@dg.asset_check(
    asset=inventory_report,
    description=(
        "The newest complete S3 Inventory report is at most RIVBULK_INVENTORY_MAX_AGE_HOURS old (warns otherwise)."
    ),
    automation_condition=HOURLY,
)
def inventory_is_fresh(settings: Settings, store: ObjectStoreResource) -> dg.AssetCheckResult:
    return inventory_age_result(settings, store)
