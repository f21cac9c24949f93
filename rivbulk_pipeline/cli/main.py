"""The `rivbulk` command: demo data, inventory reports, the history table, the Dagster UI, batch loads."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from ..settings import Settings, SettingsError
from .corrections import add_correction_parser


def cmd_create_history_table(args: argparse.Namespace, settings: Settings) -> int:
    from ..resources.deployment import aws_clients
    from ..resources.history import create_history_table

    arn = create_history_table(settings.history_table, aws_clients(settings))
    print(f"history table ready: {arn}")
    return 0


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    print(Settings.markdown_table())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="rivbulk", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="write the local demo bucket, registry users and inventory reports")
    demo.add_argument("--force", action="store_true", help="delete and recreate existing demo data")
    demo.set_defaults(run="demo:cmd_demo")

    inventory = commands.add_parser(
        "inventory", help="list the image bucket and write a real S3 Inventory report (any store, local or S3)"
    )
    inventory.add_argument("--format", choices=["CSV", "ORC", "Parquet"], default="CSV")
    inventory.add_argument("--at", help="report time, ISO-8601 (default: now, UTC)")
    inventory.set_defaults(run="inventory:cmd_inventory")

    table = commands.add_parser("create-history-table", help="create the DynamoDB import history table")
    table.set_defaults(run="main:cmd_create_history_table")

    dev = commands.add_parser("dev", help="create the demo data if missing and start the Dagster UI and daemon")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument(
        "--write-instance",
        action="store_true",
        help="only write DAGSTER_HOME/dagster.yaml (pool limit, run monitoring) and exit, for plain `dagster dev`",
    )
    dev.set_defaults(run="dev:cmd_dev")

    load = commands.add_parser(
        "load",
        help="load one inventory date as a batch job (no UI, no daemon); the run is kept in DAGSTER_HOME's instance",
        description="Exit status: 0 processed, no object failed; 1 the run failed; 2 configuration error, no run; "
        "3 processed, some objects failed; 4 refused: a run of that date is queued or in progress. "
        "Prints a JSON result record when the run starts and when it ends.",
    )
    load.add_argument("--date", help="inventory date YYYY-MM-DD (default: the newest complete report's date)")
    load.add_argument(
        "--result-uri", help="also write the JSON result record to s3://bucket/key (through the configured store)"
    )
    load.set_defaults(run=None)

    add_correction_parser(
        commands, "retry", "Reopen failures on purpose: the next load registers them again.", users=False
    )
    add_correction_parser(
        commands,
        "lost",
        "Declare registrations lost (e.g. the registry was restored from an older backup): "
        "their history records are reopened and their Indexed tags removed; the next load registers them again.",
        users=True,
    )
    where = commands.add_parser(
        "where", help="a key's (or a user's) history record and each loaded date's decision and outcome"
    )
    where.add_argument("what", help="a key in the image bucket, an s3:// URI, or a user id")
    where.set_defaults(run="corrections:cmd_where")

    shown = commands.add_parser("settings", help="print every RIVBULK_* setting as docs/settings.md's table")
    shown.set_defaults(run="main:cmd_settings")

    args = parser.parse_args(argv)
    if args.command == "load":  # reads its own settings: a broken configuration still gets a result record
        from .load import load as load_date

        return load_date(args.date, args.result_uri)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    # Each command's module is imported when it runs: `rivbulk inventory` on the local store starts
    # without PIL, the gateways or boto3.
    module, _, function = args.run.partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), function)(args, settings)
