"""The load across dates, with pandas: per date, what qualified and what happened to it, and from
the import history, who is registered, what waits for the next run and since when.

Inputs are columns only (reasons, outcomes, statuses, times), never keys, user ids or images,
and the history is aggregated batch by batch, so millions of records cost little memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..model import HistoryStatus, Outcome, Reason
from ..rules.reasons import shown_code

# What the per-date table holds, in order (also its column schema in the UI).
DATE_COLUMNS = {
    "inventory_date": "the inventory date (one partition)",
    "candidates": "candidate images of that date's report",
    "qualified": "candidates that qualified for registration",
    "not_qualified": "candidates that did not qualify (reasons in the by-reason table)",
    "indexed": "users registered from that date",
    "failed_permanent": "registrations refused for good (never retried for that image)",
    "failed_transient": "registrations that failed for now (the next run retries them)",
    "skipped": "qualified objects another run took care of",
    "registered_to_date": "users registered from this date and every earlier one",
    "note": "why nothing was registered, or that the date is not loaded yet",
}
DATE_SCHEMA = pa.schema(
    [(name, pa.string() if name in ("inventory_date", "note") else pa.int64()) for name in DATE_COLUMNS]
)
REASON_COLUMNS = {
    "inventory_date": "the inventory date",
    "step": "qualify (qualified_objects) or index (indexed_users)",
    "outcome": "not_qualified, or the registration outcome",
    "reason": "the rule's or the gateway's reason code",
    "count": "objects",
}

REASON_SCHEMA = pa.schema([(name, pa.int64() if name == "count" else pa.string()) for name in REASON_COLUMNS])
# Operators' corrections, from the history's records (each keeps its last correction).
CORRECTION_COLUMNS = {
    "corrected_at": "when (UTC)",
    "correction": "retry (failures reopened) or lost (registrations declared lost)",
    "corrected_by": "who or what corrected",
    "why": "the reason they gave",
    "objects": "records this correction reopened (and not corrected again since)",
    "registered_since": "of those, indexed since",
    "waiting": "of those, still reopened: the next load registers them",
}
CORRECTION_SCHEMA = pa.schema(
    [(n, pa.int64() if n in ("objects", "registered_since", "waiting") else pa.string()) for n in CORRECTION_COLUMNS]
)

TableReader = Callable[[str, str, list[str]], Optional[pa.Table]]  # (asset, date, columns) -> table or None


def reason_codes(reasons: pa.Array) -> pa.Array:
    """Each reason's code as the UI may show it: the text before the first ':' (`too_small: the
    image is 40x40 px` -> `too_small`) when it is in the bounded set of `rules.reasons.shown_code`,
    else `gateway_error`. Details may name the user; codes never do."""
    head = pc.utf8_trim_whitespace(pc.list_element(pc.split_pattern(pc.fill_null(reasons, ""), ":", max_splits=1), 0))
    distinct = pc.unique(head)
    shown = pa.array([shown_code(code) if code else code for code in distinct.to_pylist()], pa.string())
    return shown.take(pc.index_in(head, distinct))


@dataclass(frozen=True)
class HistoryTotals:
    records: int
    registered: int  # status indexed
    failed_permanent: int
    transient_backlog: int  # failed_transient, plus claims whose run died (lease expired)
    claims_in_flight: int
    oldest_unresolved_failure_at: Optional[float]  # epoch seconds of the oldest transient failure still waiting
    reopened: int = 0  # reopened by an operator, waiting for the next run
    corrections: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CORRECTION_COLUMNS)))

    def oldest_unresolved_age_hours(self, now: float) -> Optional[float]:
        at = self.oldest_unresolved_failure_at
        return None if at is None else round(max(0.0, now - at) / 3600, 2)


HISTORY_COLUMNS = [
    "status",
    "updated_at",
    "claim_expires_at",
    "correction",
    "corrected_by",
    "corrected_at",
    "correction_why",
]
_CORRECTION_KEY = ["correction", "corrected_by", "corrected_at", "correction_why"]


def history_totals(batches: Iterable[pa.RecordBatch], now: Optional[float] = None) -> HistoryTotals:
    """Aggregate the history's `HISTORY_COLUMNS` batch by batch (one batch in memory at a time)."""
    now = time.time() if now is None else now
    counts: dict[str, int] = {}
    expired = in_flight = records = 0
    oldest: Optional[float] = None
    corrected: list[pd.DataFrame] = []
    for batch in batches:
        frame = batch.to_pandas()
        if "correction" in frame:
            marked = frame[frame["correction"].fillna("") != ""]
            if len(marked):
                corrected.append(
                    marked.assign(
                        registered=marked["status"] == HistoryStatus.INDEXED.value,
                        waiting=marked["status"] == HistoryStatus.REOPENED.value,
                    )
                    .groupby(_CORRECTION_KEY, dropna=False)[["registered", "waiting"]]
                    .agg(["size", "sum"])
                )
        records += len(frame)
        for status, count in frame["status"].value_counts().items():
            counts[status] = counts.get(status, 0) + int(count)
        claimed = frame["status"] == HistoryStatus.CLAIMED.value
        lapsed = claimed & (frame["claim_expires_at"] < now)
        expired += int(lapsed.sum())
        in_flight += int((claimed & ~lapsed).sum())
        waiting = frame.loc[(frame["status"] == HistoryStatus.FAILED_TRANSIENT.value) | lapsed, "updated_at"]
        if len(waiting):
            first = float(waiting.min())
            oldest = first if oldest is None else min(oldest, first)
    return HistoryTotals(
        records=records,
        registered=counts.get(HistoryStatus.INDEXED.value, 0),
        failed_permanent=counts.get(HistoryStatus.FAILED_PERMANENT.value, 0),
        transient_backlog=counts.get(HistoryStatus.FAILED_TRANSIENT.value, 0) + expired,
        claims_in_flight=in_flight,
        oldest_unresolved_failure_at=oldest,
        reopened=counts.get(HistoryStatus.REOPENED.value, 0),
        corrections=_corrections(corrected),
    )


def _corrections(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per correction (CORRECTION_COLUMNS), newest first."""
    if not parts:
        return pd.DataFrame(
            {
                n: pd.Series(dtype="int64" if t == pa.int64() else "object")
                for n, t in zip(CORRECTION_SCHEMA.names, CORRECTION_SCHEMA.types)
            }
        )
    total = pd.concat(parts).groupby(level=list(range(len(_CORRECTION_KEY)))).sum()
    frame = pd.DataFrame(
        {
            "objects": total[("registered", "size")].astype("int64"),
            "registered_since": total[("registered", "sum")].astype("int64"),
            "waiting": total[("waiting", "sum")].astype("int64"),
        }
    ).reset_index()
    frame.columns = [*_CORRECTION_KEY, "objects", "registered_since", "waiting"]
    frame = frame.sort_values("corrected_at", ascending=False)
    frame["corrected_at"] = pd.to_datetime(frame["corrected_at"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return frame.rename(columns={"correction_why": "why"})[list(CORRECTION_COLUMNS)].reset_index(drop=True)


def reason_counts(dates: Iterable[str], read: TableReader) -> pd.DataFrame:
    """Per date and step, objects by outcome and reason code (REASON_COLUMNS), from the stored tables."""
    parts = []
    for date in dates:
        qualified = read("qualified_objects", date, ["reason"])
        if qualified is not None and qualified.num_rows:
            frame = pa.table({"reason": reason_codes(qualified.column("reason"))}).to_pandas()
            frame["outcome"] = frame["reason"].where(frame["reason"] == Reason.QUALIFIED.value, "not_qualified")
            parts.append(_counted(frame, date, "qualify"))
        indexed = read("indexed_users", date, ["outcome", "reason"])
        if indexed is not None and indexed.num_rows:
            frame = pa.table(
                {"outcome": indexed.column("outcome"), "reason": reason_codes(indexed.column("reason"))}
            ).to_pandas()
            frame["reason"] = frame["reason"].where(frame["outcome"] != Outcome.INDEXED.value, "")
            parts.append(_counted(frame, date, "index"))
    if not parts:
        return pd.DataFrame(
            {name: pd.Series(dtype="int64" if name == "count" else "object") for name in REASON_COLUMNS}
        )
    return pd.concat(parts, ignore_index=True)[list(REASON_COLUMNS)]


def _counted(frame: pd.DataFrame, date: str, step: str) -> pd.DataFrame:
    counted = frame.groupby(["outcome", "reason"], dropna=False).size().reset_index(name="count")
    counted.insert(0, "step", step)
    counted.insert(0, "inventory_date", date)
    return counted


def per_date(dates: list[str], by_reason: pd.DataFrame, loaded: set[str]) -> pd.DataFrame:
    """One row per date (DATE_COLUMNS): counts by outcome, registrations to date, and a note
    saying why a date registered nobody (e.g. `nothing registered: 13 already_indexed, ...`)."""
    frame = pd.DataFrame({"inventory_date": sorted(dates)})
    qualify = by_reason[by_reason["step"] == "qualify"]
    index = by_reason[by_reason["step"] == "index"]
    qualify_counts = qualify.pivot_table(index="inventory_date", columns="outcome", values="count", aggfunc="sum")
    index_counts = index.pivot_table(index="inventory_date", columns="outcome", values="count", aggfunc="sum")
    frame = frame.set_index("inventory_date")
    frame["candidates"] = qualify.groupby("inventory_date")["count"].sum()
    frame["qualified"] = qualify_counts.get(Reason.QUALIFIED.value)
    frame["not_qualified"] = qualify_counts.get("not_qualified")
    for outcome in Outcome:
        frame[outcome.value] = index_counts.get(outcome.value)
    numbers = [c for c in DATE_COLUMNS if c not in ("inventory_date", "registered_to_date", "note")]
    frame[numbers] = frame[numbers].fillna(0).astype("int64")
    frame["registered_to_date"] = frame["indexed"].cumsum()
    frame["note"] = [_note(date, row, by_reason, date in loaded) for date, row in frame.iterrows()]
    return frame.reset_index()[list(DATE_COLUMNS)]


def _note(date: str, row: pd.Series, by_reason: pd.DataFrame, loaded: bool) -> str:
    if not loaded:
        return "not loaded yet"
    if row["indexed"]:
        return ""
    mine = by_reason[(by_reason["inventory_date"] == date) & (by_reason["outcome"] != Reason.QUALIFIED.value)]
    return why_nothing_registered(mine.groupby("reason")["count"].sum().to_dict())


def why_nothing_registered(counts: Mapping[str, int], shown: int = 3) -> str:
    """`nothing registered: 13 already_indexed, 5 previously_failed, 2 no_user_id, 4 more`: the
    `shown` largest of the reasons objects were not qualified or not registered, then the rest."""
    why = sorted(((n, r) for r, n in counts.items() if n and r != Reason.QUALIFIED.value), key=lambda x: (-x[0], x[1]))
    if not why:
        return "nothing registered: no candidates"
    rest = sum(n for n, _ in why[shown:])
    return "nothing registered: " + ", ".join(
        [f"{count} {reason}" for count, reason in why[:shown]] + ([f"{rest} more"] if rest else [])
    )
