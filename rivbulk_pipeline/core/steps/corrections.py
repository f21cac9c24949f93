"""Operators correct the record: reopen failures on purpose (retry), or declare registrations lost.

A correction chooses history records (by reason code, inventory date, key prefix, keys or users),
shows what it would reopen (a dry run: counts by status and reason code), then sets each one
`reopened`, stamped with who, when and why. The next load asks about them again: the history's
change log tells the daily shortcut their record changed, qualification reads their tags, and
indexing may claim a reopened record. A lost registration also loses its `Indexed` tag, which
would otherwise stop qualification.

Counts and reason codes only are returned for display; keys are kept for the examples and the
CLI; user ids never leave the history.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import StoreError
from ..model import Correction, HistoryRecord, HistoryStatus, ObjectRef, Outcome
from ..ports import ImportHistory, ObjectStore
from .tables import open_table, table_location

EXAMPLES = 10
# Which records each correction may reopen, and which outcomes of a date's table it looks at.
STATUSES = {
    Correction.RETRY: (HistoryStatus.FAILED_PERMANENT, HistoryStatus.FAILED_TRANSIENT),
    Correction.LOST: (HistoryStatus.INDEXED,),
}
_DATE_OUTCOMES = {
    Correction.RETRY: (Outcome.FAILED_PERMANENT.value, Outcome.FAILED_TRANSIENT.value),
    Correction.LOST: (Outcome.INDEXED.value,),
}


class CorrectionError(ValueError):
    """A correction asked for something it cannot do (no criteria, no reason given, ...)."""


@dataclass(frozen=True)
class Selection:
    """Which records: every criterion given must hold (an empty one is no constraint)."""

    reasons: Sequence[str] = ()  # reason codes: the text before the first ':' (UserAlreadyExists)
    dates: Sequence[str] = ()  # inventory dates: the objects with that outcome in the date's indexed_users
    prefixes: Sequence[str] = ()  # key prefixes in the image bucket
    keys: Sequence[str] = ()  # keys in the image bucket, or s3:// URIs
    users: Sequence[str] = ()  # user ids

    def is_empty(self) -> bool:
        return not (self.reasons or self.dates or self.prefixes or self.keys or self.users)


@dataclass
class Plan:
    """What a correction chose (a dry run shows this and changes nothing)."""

    action: Correction
    records: list[HistoryRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """`<status>/<reason code>` -> objects."""
        return dict(
            sorted(collections.Counter(f"{r.status.value}/{reason_code(r.reason)}" for r in self.records).items())
        )

    def examples(self) -> list[str]:
        return sorted(str(r.ref) for r in self.records)[:EXAMPLES]


@dataclass
class Applied:
    """What a correction did."""

    plan: Plan
    reopened: int = 0
    changed_meanwhile: int = 0  # the record moved on between choosing and reopening (e.g. claimed by a run)
    tags_removed: int = 0
    tag_errors: int = 0


def reason_code(reason: str) -> str:
    return reason.split(":", 1)[0].strip() or "none"


def _uri(bucket: str, key: str) -> str:
    return key if key.startswith("s3://") else f"s3://{bucket}/{key}"


def keys_of_dates(
    store: ObjectStore, output_bucket: str, prefix: str, dates: Iterable[str], outcomes: Sequence[str]
) -> set[str]:
    """The object URIs with one of `outcomes` in these dates' indexed_users tables."""
    found: set[str] = set()
    for date in dates:
        location = table_location(output_bucket, prefix, "indexed_users", date)
        if not store.exists(location.bucket, location.key):
            raise CorrectionError(f"no indexed_users table for {date} at {location.uri}: that date was not loaded")
        with open_table(store, location) as table:
            for batch in table.iter_batches(columns=["bucket", "key", "outcome"]):
                chosen = batch.filter(pc.is_in(batch.column("outcome"), pa.array(list(outcomes), pa.string())))
                uris = pc.binary_join_element_wise("s3:/", chosen.column("bucket"), chosen.column("key"), "/")
                found.update(uris.to_pylist())
    return found


def plan(
    action: Correction | str,
    selection: Selection,
    *,
    history: ImportHistory,
    store: ObjectStore,
    image_bucket: str,
    output_bucket: str,
    output_prefix: str,
) -> Plan:
    """The records this correction would reopen; refuses an empty selection (it would reopen everything)."""
    action = Correction(action)
    if selection.is_empty():
        raise CorrectionError(f"{action}: choose what to reopen (reasons, dates, key prefixes, keys or users)")
    statuses = {s.value for s in STATUSES[action]}
    date_uris = (
        keys_of_dates(store, output_bucket, output_prefix, selection.dates, _DATE_OUTCOMES[action])
        if selection.dates
        else None
    )
    reasons = set(selection.reasons)
    prefixes = tuple(_uri(image_bucket, p) for p in selection.prefixes)
    users = set(selection.users)

    def wanted(record: HistoryRecord) -> bool:
        return (
            record.status.value in statuses
            and (not reasons or reason_code(record.reason) in reasons)
            and (date_uris is None or record.ref.uri in date_uris)
            and (not prefixes or record.ref.uri.startswith(prefixes))
            and (not users or record.user_id in users)
        )

    return Plan(action, [r for r in _candidates(history, selection, image_bucket, date_uris) if wanted(r)])


def _candidates(
    history: ImportHistory, selection: Selection, image_bucket: str, date_uris: Optional[set[str]]
) -> Iterator[HistoryRecord]:
    """The fewest records to look at: by key or user when given, else every record."""
    if selection.keys:
        for key in dict.fromkeys(selection.keys):
            yield from history.records_of(_uri(image_bucket, key))
    elif selection.users:
        for user in dict.fromkeys(selection.users):
            yield from history.records_of_user(user)
    elif date_uris is not None and len(date_uris) < 10_000:
        for uri in sorted(date_uris):
            yield from history.records_of(uri)
    else:
        yield from history.scan()


def apply(
    chosen: Plan,
    *,
    history: ImportHistory,
    store: ObjectStore,
    by: str,
    why: str,
    indexed_tag: str = "Indexed",
    now: Callable[[], float] = time.time,
) -> Applied:
    """Reopen every chosen record (stamped `by`, `why`, now); for lost registrations, also remove
    the `Indexed` tag (after the record, so a failure leaves the history to decide)."""
    if not by.strip() or not why.strip():
        raise CorrectionError(f"{chosen.action}: say who corrects and why (both are kept in the history)")
    done = Applied(chosen)
    at = now()
    for record in chosen.records:
        if not history.reopen(record, chosen.action.value, by, why, at):
            done.changed_meanwhile += 1
            continue
        done.reopened += 1
        if chosen.action == Correction.LOST:
            try:
                if _remove_tag(store, record.ref, indexed_tag):
                    done.tags_removed += 1
            except StoreError:
                done.tag_errors += 1
    return done


def _remove_tag(store: ObjectStore, ref: ObjectRef, name: str) -> bool:
    tags = store.get_tags(ref.bucket, ref.key, ref.version_id)
    kept = {k: v for k, v in tags.items() if k.lower() != name.lower()}
    if len(kept) == len(tags):
        return False
    store.put_tags(ref.bucket, ref.key, kept, ref.version_id)
    return True


def loaded_dates(store: ObjectStore, output_bucket: str, prefix: str) -> list[str]:
    """Every inventory date whose qualified_objects table is stored, oldest first."""
    folder = table_location(output_bucket, prefix, "qualified_objects", "x").key.rsplit("/", 2)[0] + "/"
    dates = (p[len(folder) :].rstrip("/").removeprefix("dt=") for p in store.list_prefixes(output_bucket, folder))
    return sorted(
        d
        for d in dates
        if store.exists(output_bucket, table_location(output_bucket, prefix, "qualified_objects", d).key)
    )


def object_story(store: ObjectStore, output_bucket: str, prefix: str, ref: ObjectRef) -> list[dict[str, str]]:
    """Each loaded date's word on one object: its decision (qualify) and its outcome (index)."""
    story = []
    for date in loaded_dates(store, output_bucket, prefix):
        for asset, step, column in (
            ("qualified_objects", "qualify", "qualified"),
            ("indexed_users", "index", "outcome"),
        ):
            location = table_location(output_bucket, prefix, asset, date)
            if not store.exists(location.bucket, location.key):
                continue
            with open_table(store, location) as table:
                for batch in table.iter_batches(columns=["bucket", "key", "version_id", column, "reason"]):
                    here = pc.and_(pc.equal(batch.column("key"), ref.key), pc.equal(batch.column("bucket"), ref.bucket))
                    for row in batch.filter(here).to_pylist():
                        outcome = row[column] if step == "index" else ("qualified" if row[column] else "not_qualified")
                        story.append({"date": date, "step": step, "version_id": row["version_id"] or "",
                                      "outcome": outcome, "reason": row["reason"]})  # fmt: skip
    return story
