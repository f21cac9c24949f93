"""The one Definitions object: the four assets and their checks, the job, the sensor, resources per deployment."""
import dagster as dg

from .defs.assets import bulk_load_assets
from .defs.checks import bulk_load_checks
from .defs.jobs import bulk_load_job
from .defs.resources import build_resources
from .defs.sensors import inventory_report_sensor
from .settings import Settings

defs = dg.Definitions(
    assets=bulk_load_assets,
    asset_checks=bulk_load_checks,
    jobs=[bulk_load_job],
    sensors=[inventory_report_sensor],
    resources=build_resources(Settings.from_env()),
)
