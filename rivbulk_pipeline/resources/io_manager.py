"""Every stored table as a pandas DataFrame, the Dagster way.

The four load assets stream their Parquet tables into the store themselves (so nothing is held
in memory) and return a MaterializeResult, which Dagster does not hand to an IO manager. This IO
manager reads those same tables back: `defs.load_asset_value("indexed_users", partition_key=...)`
and a downstream asset's input both get a DataFrame. Assets that return a DataFrame (the summary)
are written by it to the same layout.
"""

from typing import Optional

import dagster as dg
import pandas as pd
import pyarrow as pa

from ..core.steps.tables import TableLocation, open_table, write_table
from ..settings import Settings
from ..ui_metadata import location_metadata
from .object_store import ObjectStoreResource

PARTITION_COLUMN = "inventory_date"  # added when several partitions are read as one DataFrame


class StoredTableIOManager(dg.ConfigurableIOManager):
    """Reads and writes asset tables as Parquet under `<output prefix>/<asset>/dt=<date>/`."""

    settings: Settings
    store: ObjectStoreResource

    def _location(self, asset: dg.AssetKey, partition: Optional[str]) -> TableLocation:
        return self.settings.table_location(asset.path[-1], partition)

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:
            return  # nothing to store (e.g. an op with no value)
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: the stored-table IO manager stores pandas DataFrames, not"
                f" {type(obj).__name__}"
            )
        partition = context.asset_partition_key if context.has_asset_partitions else None
        location = self._location(context.asset_key, partition)
        table = pa.Table.from_pandas(obj, preserve_index=False)
        written = write_table(self.store, location, table.schema, table.to_batches())
        context.add_output_metadata({**location_metadata(self.store, location), "dagster/row_count": written.rows})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        asset = context.asset_key
        if not context.has_asset_partitions:
            return self._read(asset, None)
        keys = list(context.asset_partition_keys)
        if len(keys) == 1:
            return self._read(asset, keys[0])
        frames = [self._read(asset, key).assign(**{PARTITION_COLUMN: key}) for key in sorted(keys)]
        return pd.concat(frames, ignore_index=True)

    def _read(self, asset: dg.AssetKey, partition: Optional[str]) -> pd.DataFrame:
        with open_table(self.store, self._location(asset, partition)) as table:
            return table.read().to_pandas()
