"""`import_summary`: the load across every date, rebuilt after every load.

Per date, counts by outcome and reason from the stored tables (the reason and outcome columns
only); from the import history, who is registered, the transient backlog and its oldest
failure (status and times only). Stored as Parquet (a DataFrame through the IO manager), shown
as tables, and as numbers Dagster plots across materialisations.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import dagster as dg
import pandas as pd
import pyarrow as pa

from ..core.steps.summary import (
    CORRECTION_COLUMNS,
    CORRECTION_SCHEMA,
    DATE_COLUMNS,
    DATE_SCHEMA,
    HISTORY_COLUMNS,
    REASON_COLUMNS,
    REASON_SCHEMA,
    HistoryTotals,
    history_totals,
    per_date,
    reason_counts,
)
from ..core.steps.tables import open_table
from ..resources.history import ImportHistoryResource
from ..resources.object_store import ObjectStoreResource
from ..settings import Settings
from ..ui_metadata import column_schema
from .assets import GROUP, indexed_users, qualified_objects
from .partitions import inventory_dates

DATES_SHOWN = 90  # newest dates in the UI table (the stored table has all)
REASON_ROWS_SHOWN = 300

# After every load: once any date's tables change and no load is still running. Not `eager()`:
# that waits for every date to be loaded, and older dates may never be backfilled.
AFTER_EVERY_LOAD = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after every load")


def _records(frame: pd.DataFrame) -> list[dg.TableRecord]:
    return [
        dg.TableRecord({k: (None if pd.isna(v) else v) for k, v in row.items()}) for row in frame.to_dict("records")
    ]


@dataclass(frozen=True)
class Summary:
    by_date: pd.DataFrame  # DATE_COLUMNS
    by_reason: pd.DataFrame  # REASON_COLUMNS
    totals: HistoryTotals
    loaded: set[str]  # dates whose tables exist
    now: float
    tables_seconds: float
    history_seconds: float


def build_summary(
    settings: Settings, store: ObjectStoreResource, history: ImportHistoryResource, dates: list[str]
) -> Summary:
    """Read the stored tables' reason/outcome columns and the history's status/time columns, and aggregate."""
    started = time.monotonic()
    loaded: set[str] = set()

    def read(asset: str, date: str, columns: list[str]) -> Optional[pa.Table]:
        location = settings.table_location(asset, date)
        if not store.exists(location.bucket, location.key):
            return None
        if asset == qualified_objects.key.path[-1]:
            loaded.add(date)
        with open_table(store, location) as table:
            return table.read(columns=columns)

    by_reason = reason_counts(dates, read)
    by_date = per_date(dates, by_reason, loaded)
    tables_done = time.monotonic()
    now = time.time()
    totals = history_totals(history.scan_columns(HISTORY_COLUMNS), now=now)
    return Summary(
        by_date,
        by_reason,
        totals,
        loaded,
        now,
        tables_seconds=round(tables_done - started, 3),
        history_seconds=round(time.monotonic() - tables_done, 3),
    )


@dg.asset(
    group_name=GROUP,
    kinds={"pandas", "parquet"},
    deps=[qualified_objects, indexed_users],
    automation_condition=AFTER_EVERY_LOAD,
    metadata={"dagster/column_schema": column_schema(DATE_SCHEMA, DATE_COLUMNS)},
)
def import_summary(
    context: dg.AssetExecutionContext, settings: Settings, store: ObjectStoreResource, history: ImportHistoryResource
) -> dg.Output[pd.DataFrame]:
    """Every inventory date: candidates, qualified, registered, failed and why; users registered
    to date; the transient failures waiting for the next run and the oldest of them."""
    dates = sorted(context.instance.get_dynamic_partitions(inventory_dates.name))
    summary = build_summary(settings, store, history, dates)
    by_date, by_reason, totals, loaded = summary.by_date, summary.by_reason, summary.totals, summary.loaded
    oldest_at = totals.oldest_unresolved_failure_at
    newest = by_date[by_date["inventory_date"].isin(loaded)].tail(1)

    metadata: dict[str, object] = {
        "by_date": dg.MetadataValue.table(
            _records(by_date.tail(DATES_SHOWN)), schema=column_schema(DATE_SCHEMA, DATE_COLUMNS)
        ),
        "by_reason": dg.MetadataValue.table(
            _records(by_reason.tail(REASON_ROWS_SHOWN)),
            schema=column_schema(REASON_SCHEMA, REASON_COLUMNS),
        ),
        "corrections": dg.MetadataValue.table(
            _records(totals.corrections.head(REASON_ROWS_SHOWN)),
            schema=column_schema(CORRECTION_SCHEMA, CORRECTION_COLUMNS),
        ),
        "corrected_objects": int(totals.corrections["objects"].sum()) if len(totals.corrections) else 0,
        "reopened_waiting": totals.reopened,
        "dates_known": len(dates),
        "dates_loaded": len(loaded),
        "users_registered": totals.registered,
        "failed_permanent_total": totals.failed_permanent,
        "transient_backlog": totals.transient_backlog,
        "claims_in_flight": totals.claims_in_flight,
        "oldest_unresolved_failure_age_hours": totals.oldest_unresolved_age_hours(summary.now) or 0.0,
        "oldest_unresolved_failure_at": (
            datetime.fromtimestamp(oldest_at, timezone.utc).isoformat(timespec="seconds") if oldest_at else "none"
        ),
        "history_records": totals.records,
        "tables_seconds": summary.tables_seconds,
        "history_seconds": summary.history_seconds,
    }
    if not newest.empty:
        row = newest.iloc[0]
        metadata.update(
            {
                "newest_date": row["inventory_date"],
                "newest_date_indexed": int(row["indexed"]),
                "newest_date_failed_permanent": int(row["failed_permanent"]),
            }
        )
    return dg.Output(by_date, metadata=metadata)
