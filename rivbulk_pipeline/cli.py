"""The `rivbulk` command: demo data, inventory reports, the history table, the Dagster UI, batch loads."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from datetime import datetime, timezone
from typing import Optional, Sequence

from .defs.pools import GATEWAY_POOL_LIMIT
from .settings import Settings, SettingsError


def _store(settings: Settings):
    if settings.deployment == "local":
        # The folder alone: building every resource would import boto3, dagster-aws and the
        # registry, a second of start-up for `rivbulk inventory`.
        from .resources.object_store.local import LocalObjectStore

        return LocalObjectStore(root=str(settings.local_store_root))
    from .defs.resources import build_resources

    return build_resources(settings)["store"]


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import create_demo

    if settings.deployment != "local":
        print("rivbulk demo writes the local default's data; unset RIVBULK_DEPLOYMENT", file=sys.stderr)
        return 2
    home = settings.home_path
    if (home / "store").exists():
        if not args.force:
            print(f"demo data already in {home} (use --force to recreate it)")
            return 0
        for name in ("store", "registry.sqlite", "import_history.sqlite", "dagster_home"):
            path = home / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    create_demo(settings)
    print(f"demo data written to {home}")
    return 0


def cmd_inventory(args: argparse.Namespace, settings: Settings) -> int:
    from .bucket_report import write_report

    created_at = datetime.fromisoformat(args.at) if args.at else datetime.now(timezone.utc)
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=timezone.utc)
    # Not truncated to the minute: objects are listed as of `created_at`, and truncating "now"
    # would leave out everything written in the current minute (the folder name is per minute anyway).
    key = write_report(_store(settings), settings, created_at, args.format)
    print(f"wrote s3://{settings.inventory_bucket}/{key}")
    return 0


def cmd_create_history_table(args: argparse.Namespace, settings: Settings) -> int:
    from .defs.resources import aws_clients
    from .resources.history import create_history_table

    arn = create_history_table(settings.history_table, aws_clients(settings))
    print(f"history table ready: {arn}")
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    if settings.deployment == "local" and not (settings.home_path / "store").exists():
        cmd_demo(argparse.Namespace(force=False), settings)
    dagster_home = os.environ.get("DAGSTER_HOME") or str(settings.home_path / "dagster_home")
    os.makedirs(dagster_home, exist_ok=True)
    env = dict(os.environ, DAGSTER_HOME=dagster_home, RIVBULK_HOME=str(settings.home_path))
    write_instance_config(os.path.join(dagster_home, "dagster.yaml"))
    if args.write_instance:
        print(f"wrote {os.path.join(dagster_home, 'dagster.yaml')}; now: DAGSTER_HOME={dagster_home} dagster dev")
        return 0
    # A workspace file of our own, so the code location is called `rivbulk` wherever this runs from.
    workspace = os.path.join(dagster_home, "workspace.yaml")
    with open(workspace, "w") as out:
        out.write("load_from:\n  - python_module:\n      module_name: rivbulk_pipeline.definitions\n      location_name: rivbulk\n")
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
        "runs": {"tag_concurrency_limits": [{"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]},
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


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    print(Settings.markdown_table())
    return 0


def _correction_resources(settings: Settings):
    from .defs.resources import build_resources

    resources = build_resources(settings)
    return resources["history"], resources["store"]


def cmd_correct(args: argparse.Namespace, settings: Settings) -> int:
    """`rivbulk retry` / `rivbulk lost`: a dry run unless --apply; counts by status and reason code."""
    import getpass
    import json

    from .core.steps import corrections

    keys = list(args.key or [])
    if args.keys_file:
        with open(args.keys_file) as listed:
            keys += [line.strip() for line in listed if line.strip()]
    selection = corrections.Selection(
        reasons=args.reason or [], dates=args.date or [], prefixes=args.prefix or [], keys=keys,
        users=getattr(args, "user", None) or [],
    )
    history, store = _correction_resources(settings)
    try:
        chosen = corrections.plan(
            args.command, selection, history=history, store=store, image_bucket=settings.image_bucket,
            output_bucket=settings.output_bucket_name, output_prefix=settings.output_prefix,
        )
        report = {"action": args.command, "dry_run": not args.apply, "chosen": len(chosen.records),
                  "by_status_and_reason": chosen.counts(), "examples": chosen.examples()}  # fmt: skip
        if args.apply:
            done = corrections.apply(chosen, history=history, store=store, by=args.by or getpass.getuser(), why=args.why or "")
            report.update(reopened=done.reopened, changed_meanwhile=done.changed_meanwhile,
                          tags_removed=done.tags_removed, tag_errors=done.tag_errors)  # fmt: skip
    except corrections.CorrectionError as error:
        print(error, file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    if not args.apply:
        print("dry run: nothing changed; add --apply --why '...' to reopen these for the next load", file=sys.stderr)
    return 0


def cmd_where(args: argparse.Namespace, settings: Settings) -> int:
    """The history's records of a key (or of a user's objects) and each loaded date's word on them."""
    from datetime import datetime as _datetime

    from .core.steps.corrections import object_story

    history, store = _correction_resources(settings)
    given = args.what
    uri = given if given.startswith("s3://") else f"s3://{settings.image_bucket}/{given}"
    records = history.records_of(uri) or ([] if given.startswith("s3://") else history.records_of_user(given))
    if not records:
        print(f"{given}: no record in the import history (not a key of {settings.image_bucket}, nor a user id it names)")
    refs = sorted({r.ref for r in records}) or [_ref_of(uri)]
    for record in records:
        when = lambda t: _datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") if t else "-"  # noqa: E731
        print(f"{record.ref}\n  status {record.status.value}, reason {record.reason or '-'}, attempts {record.attempts},"
              f" etag {record.etag}, user {record.user_id or '-'}\n  last written {when(record.updated_at)} by {record.owner or '-'}")
        if record.correction:
            print(f"  corrected ({record.correction}) {when(record.corrected_at)} by {record.corrected_by}: {record.correction_why}")
    for ref in dict.fromkeys(r.__class__(r.bucket, r.key) for r in refs):
        story = object_story(store, settings.output_bucket_name, settings.output_prefix, ref)
        print(f"{ref}: {len(story)} entries in the loaded dates' tables")
        for entry in story:
            print(f"  {entry['date']}  {entry['step']:<8} {entry['outcome']:<17} {entry['reason']}")
    return 0 if records else 1


def _ref_of(uri: str):
    from .core.model import ObjectRef

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return ObjectRef(bucket, key)


def _add_correction(commands, name: str, help_text: str, users: bool) -> None:
    parser = commands.add_parser(name, help=help_text, description=help_text + " A dry run unless --apply.")
    if name == "retry":
        parser.add_argument("--reason", action="append", help="a reason code, e.g. UserAlreadyExists (repeatable)")
    else:
        parser.set_defaults(reason=None)
    parser.add_argument("--date", action="append", help="an inventory date YYYY-MM-DD: its objects with that outcome (repeatable)")
    parser.add_argument("--prefix", action="append", help="a key prefix in the image bucket (repeatable)")
    parser.add_argument("--key", action="append", help="a key in the image bucket or an s3:// URI (repeatable)")
    parser.add_argument("--keys-file", help="a file of keys, one a line")
    if users:
        parser.add_argument("--user", action="append", help="a user id (repeatable)")
    parser.add_argument("--apply", action="store_true", help="reopen them (default: only count them)")
    parser.add_argument("--why", help="why: kept in the history with each record (required with --apply)")
    parser.add_argument("--by", help="who corrects (default: the login name)")
    parser.set_defaults(run=cmd_correct)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="rivbulk", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="write the local demo bucket, registry users and inventory reports")
    demo.add_argument("--force", action="store_true", help="delete and recreate existing demo data")
    demo.set_defaults(run=cmd_demo)

    inventory = commands.add_parser(
        "inventory", help="list the image bucket and write a real S3 Inventory report (any store, local or S3)"
    )
    inventory.add_argument("--format", choices=["CSV", "ORC", "Parquet"], default="CSV")
    inventory.add_argument("--at", help="report time, ISO-8601 (default: now, UTC)")
    inventory.set_defaults(run=cmd_inventory)

    table = commands.add_parser("create-history-table", help="create the DynamoDB import history table")
    table.set_defaults(run=cmd_create_history_table)

    dev = commands.add_parser("dev", help="create the demo data if missing and start the Dagster UI and daemon")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument(
        "--write-instance", action="store_true",
        help="only write DAGSTER_HOME/dagster.yaml (pool limit, run monitoring) and exit, for plain `dagster dev`",
    )
    dev.set_defaults(run=cmd_dev)

    load = commands.add_parser(
        "load",
        help="load one inventory date as a batch job (no UI, no daemon); the run is recorded in DAGSTER_HOME's instance",
        description="Exit status: 0 processed, no object failed; 1 the run failed; 2 configuration error, no run; "
        "3 processed, some objects failed; 4 refused: a run of that date is queued or in progress. "
        "Prints a JSON result record when the run starts and when it ends.",
    )
    load.add_argument("--date", help="inventory date YYYY-MM-DD (default: the newest complete report's date)")
    load.add_argument("--result-uri", help="also write the JSON result record to s3://bucket/key (through the configured store)")
    load.set_defaults(run=None)

    _add_correction(commands, "retry", "Reopen failures on purpose: the next load registers them again.", users=False)
    _add_correction(
        commands, "lost", "Declare registrations lost (e.g. the registry was restored from an older backup): "
        "their history records are reopened and their Indexed tags removed; the next load registers them again.", users=True,
    )
    where = commands.add_parser("where", help="a key's (or a user's) history record and each loaded date's decision and outcome")
    where.add_argument("what", help="a key in the image bucket, an s3:// URI, or a user id")
    where.set_defaults(run=cmd_where)

    shown = commands.add_parser("settings", help="print every RIVBULK_* setting as docs/settings.md's table")
    shown.set_defaults(run=cmd_settings)

    args = parser.parse_args(argv)
    if args.command == "load":  # reads its own settings: a broken configuration still gets a result record
        from .load import load as load_date

        return load_date(args.date, args.result_uri)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    return args.run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
