"""`correct_history_job`: an operator's correction from the launchpad (retry failures, declare
registrations lost), a dry run unless `dry_run: false`.

Choices are reason codes, inventory dates, key prefixes and keys: user ids are chosen from the
CLI only (`rivbulk lost --user`), so that none is kept in Dagster's run storage with the config.
"""

from typing import Any, Literal

import dagster as dg
from pydantic import Field

from ..core.steps import corrections
from ..resources.history import ImportHistoryResource
from ..resources.object_store import ObjectStoreResource
from ..settings import Settings


class CorrectionConfig(dg.Config):
    action: Literal["retry", "lost"] = Field(
        "retry",
        description="retry: reopen failures; lost: registrations the registry lost (also removes the Indexed tag)",
    )
    reasons: list[str] = Field([], description="reason codes, e.g. UserAlreadyExists")
    dates: list[str] = Field(
        [], description="inventory dates (YYYY-MM-DD): the objects with that outcome on those dates"
    )
    key_prefixes: list[str] = Field([], description="key prefixes in the image bucket")
    keys: list[str] = Field([], description="keys in the image bucket (or s3:// URIs)")
    dry_run: bool = Field(True, description="only count what would be reopened; change nothing")
    why: str = Field("", description="why (kept in the history with each record); required unless a dry run")


def correction_metadata(chosen: corrections.Plan, applied: "corrections.Applied | None") -> dict[str, Any]:
    """Counts, reason codes and object keys (locations): never user ids."""
    metadata: dict[str, Any] = {
        "action": chosen.action.value,
        "dry_run": applied is None,
        "chosen": len(chosen.records),
        "by_status_and_reason": dg.MetadataValue.json(chosen.counts()),
        "examples": dg.MetadataValue.json(chosen.examples()),
    }
    if applied is not None:
        metadata.update(
            reopened=applied.reopened,
            changed_meanwhile=applied.changed_meanwhile,
            tags_removed=applied.tags_removed,
            tag_errors=applied.tag_errors,
        )
    return metadata


# The counts stay in memory (the stored-table IO manager keeps DataFrames of assets); the UI shows them as metadata.
@dg.op(
    description="Choose history records, count them, and (unless a dry run) reopen them for the next load.",
    out=dg.Out(dict, io_manager_key="correction_counts"),
)
def correct_history(
    context: dg.OpExecutionContext,
    config: CorrectionConfig,
    settings: Settings,
    store: ObjectStoreResource,
    history: ImportHistoryResource,
) -> dg.Output[dict]:
    selection = corrections.Selection(
        reasons=config.reasons, dates=config.dates, prefixes=config.key_prefixes, keys=config.keys
    )
    chosen = corrections.plan(
        config.action,
        selection,
        history=history,
        store=store,
        image_bucket=settings.image_bucket,
        output_bucket=settings.output_bucket_name,
        output_prefix=settings.output_prefix,
    )
    applied = None
    if not config.dry_run:
        by = context.run.tags.get("dagster/user") or f"dagster run {context.run_id}"
        applied = corrections.apply(chosen, history=history, store=store, by=by, why=config.why)
        context.log.info(
            f"{config.action}: reopened {applied.reopened} of {len(chosen.records)}; the next load registers them"
        )
    else:
        context.log.info(f"{config.action} (dry run): {len(chosen.records)} would be reopened: {chosen.counts()}")
    return dg.Output(chosen.counts(), metadata=correction_metadata(chosen, applied))


@dg.job(
    description="Correct the import history: retry failures on purpose, or declare registrations lost. "
    "Dry run by default; set dry_run: false and why to reopen. The next load registers what was reopened."
)
def correct_history_job() -> None:
    correct_history()
