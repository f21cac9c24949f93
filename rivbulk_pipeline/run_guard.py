"""Two runs of one inventory date never run at once, however they were started.

The daemon's queue holds a date's runs one at a time (`dagster/partition` limit 1), and
`rivbulk load` refuses a date it sees queued or running; but two loads, or a load and a run the
queue lets go, can pass those checks in the same instant. So each run checks once more after it
exists: among the date's unfinished runs, the one created first goes on and any later one stops,
naming it. A run is recorded before its check, so of two that race, one always sees the other.
"""

from __future__ import annotations

from typing import Optional

import dagster as dg
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from dagster._core.storage.tags import PARTITION_NAME_TAG

REFUSED = "refused"  # how a refusal begins: `rivbulk load` exits 4 on it


class AnotherRunOfTheDate(Exception):
    """This run was created after another unfinished run of its date, and stops."""


def earlier_run_of_the_date(instance: dg.DagsterInstance, run_id: str, date: str) -> Optional[dg.DagsterRun]:
    """The first-created unfinished run of `date` that was created before `run_id`, or None. An
    earlier run whose worker this machine sees dead (SIGKILL, OOM) is failed on the way, as run
    monitoring would fail it: a dead run never holds its date, even where no daemon watches."""
    from .run_launchers import fail_if_worker_dead  # not at import: it loads dagster-aws's ECS launcher

    mine = instance.get_run_record_by_id(run_id)
    if mine is None:
        return None
    records = instance.get_run_records(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES, tags={PARTITION_NAME_TAG: date}))
    earlier = sorted((r for r in records if r.storage_id < mine.storage_id), key=lambda r: r.storage_id)
    for record in earlier:  # storage ids follow creation
        if not fail_if_worker_dead(instance, record.dagster_run, f"run {run_id} of {date}"):
            return record.dagster_run
    return None


def refusal(other: dg.DagsterRun, date: str) -> str:
    """What a run (or `rivbulk load`) says when another run of its date holds it."""
    return (
        f"{REFUSED}: run {other.run_id} of {date} is {other.status.value}; two runs of one date never run at once "
        "(run again when it has finished)"
    )


def stop_if_another_run_of_the_date(context: dg.AssetExecutionContext) -> None:
    """Called as each load step starts: raises AnotherRunOfTheDate if an earlier unfinished run
    of the same date exists."""
    date = context.run.tags.get(PARTITION_NAME_TAG)
    if date is None:  # not a run of a date
        return
    other = earlier_run_of_the_date(context.instance, context.run.run_id, date)
    if other is not None:
        raise AnotherRunOfTheDate(refusal(other, date))
