"""Run the bulk load for one partition in this process (killed by test_kill_and_resume)."""

import sys

import dagster as dg

from rivbulk_pipeline.defs.assets import bulk_load_assets
from rivbulk_pipeline.resources.deployment import build_resources
from rivbulk_pipeline.settings import Settings

if __name__ == "__main__":
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            bulk_load_assets,
            partition_key=sys.argv[1],
            resources=build_resources(Settings.from_env()),
            instance=instance,
        )
    sys.exit(0 if result.success else 1)
