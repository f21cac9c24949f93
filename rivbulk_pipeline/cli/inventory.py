"""`rivbulk inventory`: a real S3 Inventory report of the image bucket, for a bucket that has no
inventory configuration (the local store, a bucket we may not configure).

Imports only the store it is given and the report writer: the command starts in well under a
second (the demo, the gateways and boto3 stay unimported on the local store).
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from ..core.inventory.writer import write_inventory_report
from ..core.ports import ObjectStore
from ..resources.deployment import store_for
from ..settings import Settings


def write_report(store: ObjectStore, settings: Settings, created_at: datetime, file_format: str = "CSV") -> str:
    """A real S3 Inventory report of the image bucket as it stood at `created_at`."""
    listed = (
        batch.filter(
            pc.less_equal(
                batch.column("last_modified"), pa.scalar(created_at, batch.schema.field("last_modified").type)
            )
        )
        for batch in store.list_object_batches(settings.image_bucket)
    )
    return write_inventory_report(
        store,
        listed,
        source_bucket=settings.image_bucket,
        destination_bucket=settings.inventory_bucket,
        destination_prefix=settings.inventory_prefix,
        config_id=settings.inventory_config_id,
        created_at=created_at,
        file_format=file_format,
    )


def cmd_inventory(args: argparse.Namespace, settings: Settings) -> int:
    created_at = datetime.fromisoformat(args.at) if args.at else datetime.now(timezone.utc)
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=timezone.utc)
    # Not truncated to the minute: objects are listed as of `created_at`, and truncating "now"
    # would leave out everything written in the current minute (the folder name is per minute anyway).
    key = write_report(store_for(settings), settings, created_at, args.format)
    print(f"wrote s3://{settings.inventory_bucket}/{key}")
    return 0
