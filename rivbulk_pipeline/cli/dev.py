"""`rivbulk dev`: the demo data if missing, then the Dagster UI and daemon on the local default."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from ..defs.pools import GATEWAY_POOL_LIMIT
from ..settings import Settings
from .demo import cmd_demo


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    if settings.deployment == "local" and not settings.local_store_root.exists():
        cmd_demo(argparse.Namespace(force=False), settings)
    dagster_home = os.environ.get("DAGSTER_HOME") or str(settings.local_dagster_home)
    os.makedirs(dagster_home, exist_ok=True)
    env = dict(os.environ, DAGSTER_HOME=dagster_home, RIVBULK_HOME=str(settings.home_path))
    write_instance_config(os.path.join(dagster_home, "dagster.yaml"))
    if args.write_instance:
        print(f"wrote {os.path.join(dagster_home, 'dagster.yaml')}; now: DAGSTER_HOME={dagster_home} dagster dev")
        return 0
    # A workspace file of our own, so the code location is called `rivbulk` wherever this runs from.
    workspace = os.path.join(dagster_home, "workspace.yaml")
    with open(workspace, "w") as out:
        out.write(
            "load_from:\n  - python_module:\n      module_name: rivbulk_pipeline.definitions\n      location_name:"
            " rivbulk\n"
        )
    dagster = shutil.which("dagster", path=os.path.dirname(sys.executable)) or shutil.which("dagster") or "dagster"
    command = [dagster, "dev", "-w", workspace, "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={dagster_home}; open http://{args.host}:{args.port}")
    os.execvpe(command[0], command, env)
    return 0  # not reached


# What `rivbulk dev` adds to DAGSTER_HOME/dagster.yaml (each key only where the file has none, so an
# operator's own settings stay). The run launcher checks that a run's process lives, so the
# daemon's run monitoring fails a killed run and then frees its pool slot; a run whose worker
# died (not one whose step failed) is retried once.
LOCAL_INSTANCE = {
    "telemetry": {"enabled": False},
    "run_launcher": {"module": "rivbulk_pipeline.run_launchers", "class": "LocalRunLauncher"},
    "run_monitoring": {
        "enabled": True,
        "poll_interval_seconds": 30,
        "free_slots_after_run_end_seconds": 30,
        "max_resume_run_attempts": 0,  # DefaultRunLauncher cannot resume a run: a new run retries it
    },
    "run_retries": {"enabled": True, "max_retries": 1, "retry_on_asset_or_op_failure": False},
    "concurrency": {
        "pools": {"default_limit": GATEWAY_POOL_LIMIT},
        # One run per inventory date at a time: two runs of one partition would race on its tables.
        "runs": {
            "tag_concurrency_limits": [
                {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
            ]
        },
    },
}


def _fill(config: dict, defaults: dict) -> None:
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _fill(config[key], value)
        else:
            config.setdefault(key, value)


def write_instance_config(path: str) -> None:
    """Telemetry off, the gateway pool's limit, run monitoring and retries (`LOCAL_INSTANCE`),
    kept alongside an operator's own settings."""
    import yaml

    config = {}
    if os.path.exists(path):
        with open(path) as existing:
            config = yaml.safe_load(existing) or {}
    _fill(config, LOCAL_INSTANCE)
    with open(path, "w") as out:
        yaml.safe_dump(config, out, sort_keys=False)
