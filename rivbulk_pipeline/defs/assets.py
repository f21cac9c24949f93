"""The four assets: thin functions that hand resources to the core's steps.

Each writes its table as Parquet in the store and reports counts and locations as metadata:
never image bytes, property contents or user ids.
"""

import collections
import functools
import os
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from ..core.inventory.batch_manifest import BatchManifestWriter, batch_manifest_spec, candidate_mask, exclusion_reasons
from ..core.inventory.reader import iter_inventory_batches, load_manifest
from ..core.inventory.reports import newest_complete_report
from ..core.model import CANDIDATE_SCHEMA, INDEXED_SCHEMA, INVENTORY_SCHEMA, QUALIFIED_SCHEMA, Outcome
from ..core.rules.ratelimit import RateLimiter
from ..core.rules.riv_protocol import INLINE, largest_inline_image
from ..core.steps.call_meter import CallMeter
from ..core.steps.indexing import IndexingPolicy, index_qualified
from ..core.steps.known_outcomes import HISTORY_READ_AT, load_previous_outcomes
from ..core.steps.progress import Progress
from ..core.steps.qualify import QualifyStats, qualify_candidates
from ..core.steps.summary import why_nothing_registered
from ..core.steps.tables import BATCH_ROWS, TableLocation, open_table, write_table
from ..resources.gateway import GatewayResource
from ..resources.history import ImportHistoryResource
from ..resources.object_store import ObjectStoreResource
from ..resources.registration import RegistrationProviderResource
from ..run_guard import stop_if_another_run_of_the_date
from ..settings import Settings
from ..ui_metadata import (
    FailedRows,
    location_metadata,
    not_indexed,
    not_qualified,
    schema_metadata,
    warn_permanent_failures,
)
from .partitions import inventory_dates
from .pools import GATEWAY_POOL

GROUP = "rivbulk"


def _throughput(name: str, count: int, started: float) -> dict[str, float]:
    """The step's duration and `name` per second, for the asset's page."""
    elapsed = time.monotonic() - started
    return {"duration_seconds": round(elapsed, 3), f"{name}_per_second": round(count / elapsed, 2) if elapsed else 0.0}


def _counted(batches: Iterable[pa.RecordBatch], column: str, counts: collections.Counter) -> Iterator[pa.RecordBatch]:
    """Pass batches through while counting the values of one column (vectorised)."""
    for batch in batches:
        for item in pc.value_counts(batch.column(column)).to_pylist():
            counts[str(item["values"])] += item["counts"]
        yield batch


def _load_asset(schema: pa.Schema, kinds: set[str], **more: Any) -> Callable:
    """The shape the four load assets share: one table a date, its columns shown in the UI, and
    never two runs of the date at once (run_guard.py: each step checks as it starts)."""
    as_asset = dg.asset(
        partitions_def=inventory_dates, group_name=GROUP, kinds=kinds, metadata=schema_metadata(schema), **more
    )

    def decorate(step: Callable) -> dg.AssetsDefinition:
        @functools.wraps(step)  # Dagster reads the resources from the wrapped signature
        def guarded(context: dg.AssetExecutionContext, **resources: Any) -> Any:
            stop_if_another_run_of_the_date(context)
            return step(context, **resources)

        return as_asset(guarded)

    return decorate


@_load_asset(INVENTORY_SCHEMA, {"s3", "parquet"})
def inventory_report(
    context: dg.AssetExecutionContext, settings: Settings, store: ObjectStoreResource
) -> dg.MaterializeResult:
    """The inventory date's newest complete S3 Inventory report, checksums verified, keys decoded."""
    started = time.monotonic()
    folder = newest_complete_report(store, settings.inventory_bucket, settings.report_root, context.partition_key)
    manifest = load_manifest(store, settings.inventory_bucket, f"{settings.report_root}/{folder.name}")
    context.log.info(f"reading {len(manifest.files)} {manifest.file_format} data file(s) of report {folder.name}")
    progress = Progress("inventory rows", None, context.log.info)

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in iter_inventory_batches(store, manifest, columnar_keys_url_encoded=settings.columnar_keys_flag):
            progress.advance(batch.num_rows)
            yield batch

    table = write_table(
        store, settings.table_location("inventory_report", context.partition_key), INVENTORY_SCHEMA, batches()
    )
    return dg.MaterializeResult(
        metadata={
            "report_folder": folder.name,
            "report_created_at": manifest.created_at.isoformat(),
            "file_format": manifest.file_format,
            "data_files": len(manifest.files),
            "dagster/row_count": table.rows,
            **location_metadata(store, table.location),
            "table_bytes": table.bytes,
            **_throughput("rows", table.rows, started),
        }
    )


@_load_asset(CANDIDATE_SCHEMA, {"s3", "csv"}, deps=[inventory_report])
def batch_manifest(
    context: dg.AssetExecutionContext, settings: Settings, store: ObjectStoreResource
) -> dg.MaterializeResult:
    """Candidate images (in the image bucket, PNG/JPEG by name, current versions, no delete markers), also written as an
    S3BatchOperations_CSV_20180820 manifest so that an S3 Batch Operations job can run on it."""
    partition = context.partition_key
    excluded: collections.Counter = collections.Counter()
    manifest_key = "/".join(
        p for p in (settings.output_prefix.strip("/"), "batch_manifest", f"dt={partition}", "manifest.csv") if p
    )
    with tempfile.TemporaryDirectory(prefix="rivbulk-manifest-") as folder:
        csv_path = os.path.join(folder, "manifest.csv")
        with (
            BatchManifestWriter(csv_path) as csv_writer,
            open_table(store, settings.table_location("inventory_report", partition)) as inventory,
        ):

            def candidates() -> Iterator[pa.RecordBatch]:
                for batch in inventory.iter_batches(batch_size=BATCH_ROWS):
                    mask = candidate_mask(batch, settings.image_bucket)
                    reasons = exclusion_reasons(batch, settings.image_bucket)
                    for item in pc.value_counts(reasons.filter(pc.invert(mask))).to_pylist():
                        excluded[item["values"]] += item["counts"]
                    chosen = batch.filter(mask).select(CANDIDATE_SCHEMA.names)
                    csv_writer.write(chosen)
                    yield chosen

            table = write_table(
                store, settings.table_location("batch_manifest", partition), CANDIDATE_SCHEMA, candidates()
            )
        manifest_etag = store.upload_file(settings.output_bucket_name, manifest_key, csv_path)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.rows,
            "candidates": table.rows,
            **{f"excluded_{reason}": count for reason, count in sorted(excluded.items())},
            **location_metadata(store, TableLocation(settings.output_bucket_name, manifest_key), "manifest"),
            "manifest_etag": manifest_etag,
            "manifest_spec": dg.MetadataValue.json(batch_manifest_spec(csv_writer.has_versions)),
            **location_metadata(store, table.location),
        }
    )


@_load_asset(QUALIFIED_SCHEMA, {"s3", "parquet"}, deps=[batch_manifest])
def qualified_objects(
    context: dg.AssetExecutionContext,
    settings: Settings,
    store: ObjectStoreResource,
    registration: RegistrationProviderResource,
    history: ImportHistoryResource,
) -> dg.MaterializeResult:
    """Every candidate with a decision: qualified (with its user) or not, and why."""
    partition = context.partition_key
    reasons: collections.Counter = collections.Counter()
    failed = FailedRows()
    started = time.monotonic()
    read_at = time.time()  # stored with the table: the next date asks the change log from here
    # Final outcomes of the previous loaded date: those objects need no lookup when unchanged
    # (unless the history's change log says their record changed since).
    known = load_previous_outcomes(
        store, settings.output_bucket_name, settings.output_prefix, partition, changes_since=history.changes_since
    )
    stats = QualifyStats()
    with open_table(store, settings.table_location("batch_manifest", partition)) as candidate_table:
        candidates = candidate_table.metadata.num_rows
        strategy = history.expect_lookups(max(0, candidates - (len(known) if known is not None else 0)))
        progress = Progress("qualified", candidates, context.log.info)
        decisions = qualify_candidates(
            candidate_table.iter_batches(batch_size=BATCH_ROWS),
            store=store,
            provider=registration,
            history=history,
            concurrency=settings.qualify_concurrency,
            progress=progress,
            known=known,
            stats=stats,
            user_id_pattern=settings.user_id_pattern,
        )
        table = write_table(
            store,
            settings.table_location("qualified_objects", partition),
            QUALIFIED_SCHEMA.with_metadata({HISTORY_READ_AT: repr(read_at).encode()}),
            failed.watch(_counted(decisions, "reason", reasons), not_qualified, attempts=None),
        )
    context.log.info(progress.summary())
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.rows,
            "qualified": reasons.get("qualified", 0),
            "not_qualified": table.rows - reasons.get("qualified", 0),
            **{f"reason_{reason}": count for reason, count in sorted(reasons.items())},
            **failed.metadata(counts=False),  # the counts by reason are above, `qualified` included
            **location_metadata(store, table.location),
            "previous_date": known.source if known is not None else "none",
            "decided_by_previous_date": stats.known_before,
            "changed_since_previous_date": len(known.changed) if known is not None else 0,
            "history_strategy": strategy,
            "history_lookups": stats.history_calls,
            "history_keys_asked": stats.history_keys,
            "tag_reads": stats.tag_reads,
            **_throughput("objects", table.rows, started),
        },
    )


# pool: one indexing step at a time across all runs, so one gateway rate for the deployment
@_load_asset(INDEXED_SCHEMA, {"s3", "parquet"}, deps=[qualified_objects], pool=GATEWAY_POOL)
def indexed_users(
    context: dg.AssetExecutionContext,
    settings: Settings,
    store: ObjectStoreResource,
    registration: RegistrationProviderResource,
    gateway: GatewayResource,
    history: ImportHistoryResource,
) -> dg.MaterializeResult:
    """Each qualified object registered through the gateway at a bounded rate; each outcome is in
    the import history as soon as it is known, so a rerun resumes where this one stopped."""
    partition = context.partition_key
    outcomes: collections.Counter = collections.Counter()
    decisions: collections.Counter = collections.Counter()  # qualified_objects' reasons: why nothing may be registered
    failed = FailedRows()
    started = time.monotonic()
    with open_table(store, settings.table_location("qualified_objects", partition)) as qualified_table:
        for _ in _counted(qualified_table.iter_batches(columns=["reason"]), "reason", decisions):
            pass
        qualified_total = decisions.get("qualified", 0)
        # Counts objects done, whatever their outcome: the outcomes are logged when the step ends.
        progress = Progress("outcomes recorded", qualified_total, context.log.info)
        meter = CallMeter(settings.index_rate, settings.index_concurrency)
        results = index_qualified(
            qualified_table.iter_batches(batch_size=BATCH_ROWS),
            store=store,
            provider=registration,
            gateway=gateway,
            history=history,
            # One run at a time holds the pool; the one before may have called until just now.
            limiter=RateLimiter(settings.index_rate, follows_another=True),
            policy=IndexingPolicy(
                owner=context.run.run_id,
                concurrency=settings.index_concurrency,
                max_attempts=settings.index_max_attempts,
                lease_seconds=settings.claim_lease_seconds,
                # The embedded registry answers within its call; RIV's workflow may outlive the call.
                settle_after_seconds=settings.gateway_workflow_timeout_seconds if settings.deployment == "aws" else 0.0,
                largest_image_bytes=(
                    largest_inline_image(settings.gateway_max_payload_bytes)
                    if settings.deployment == "aws" and settings.gateway_image_mode == INLINE
                    else None
                ),
            ),
            log=context.log.warning,
            progress=progress,
            meter=meter,
        )
        table = write_table(
            store,
            settings.table_location("indexed_users", partition),
            INDEXED_SCHEMA,
            failed.watch(
                warn_permanent_failures(_counted(results, "outcome", outcomes), context.log.warning), not_indexed
            ),
        )
    context.log.info(progress.summary())
    gateway_figures = meter.figures()
    if gateway_figures.calls:
        (context.log.warning if gateway_figures.bound_limits else context.log.info)(gateway_figures.summary())
    registered = outcomes.get(Outcome.INDEXED.value, 0)
    context.log.info(
        f"registered {registered} of {qualified_total} qualified: "
        + ", ".join(f"{outcomes.get(o.value, 0)} {o.value}" for o in Outcome if o != Outcome.INDEXED)
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.rows,
            **{f"outcome_{outcome.value}": outcomes.get(outcome.value, 0) for outcome in Outcome},
            **failed.metadata(),
            **({"note": why_nothing_registered(decisions + failed.reasons)} if not registered else {}),
            **location_metadata(store, table.location),
            **_throughput("registrations", outcomes.get(Outcome.INDEXED.value, 0), started),
            "configured_rate_per_second": settings.index_rate,
            **gateway_figures.as_metadata(),
        },
    )


bulk_load_assets = [inventory_report, batch_manifest, qualified_objects, indexed_users]
