import dagster as dg

from .assets import bulk_load_assets

bulk_load_job = dg.define_asset_job(
    "bulk_load_job",
    selection=dg.AssetSelection.assets(*bulk_load_assets),
    description="Load one inventory date: read the report, pick candidates, qualify, register.",
)
