"""`rivbulk retry`, `rivbulk lost` (reopen records for the next load) and `rivbulk where` (a key's story)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from ..settings import Settings


def _correction_resources(settings: Settings):
    from ..resources.deployment import build_resources

    resources = build_resources(settings)
    return resources["history"], resources["store"]


def cmd_correct(args: argparse.Namespace, settings: Settings) -> int:
    """`rivbulk retry` / `rivbulk lost`: a dry run unless --apply; counts by status and reason code."""
    import getpass
    import json

    from ..core.steps import corrections

    keys = list(args.key or [])
    if args.keys_file:
        with open(args.keys_file) as listed:
            keys += [line.strip() for line in listed if line.strip()]
    selection = corrections.Selection(
        reasons=args.reason or [],
        dates=args.date or [],
        prefixes=args.prefix or [],
        keys=keys,
        users=getattr(args, "user", None) or [],
    )
    history, store = _correction_resources(settings)
    try:
        chosen = corrections.plan(
            args.command,
            selection,
            history=history,
            store=store,
            image_bucket=settings.image_bucket,
            output_bucket=settings.output_bucket_name,
            output_prefix=settings.output_prefix,
        )
        report = {"action": args.command, "dry_run": not args.apply, "chosen": len(chosen.records),
                  "by_status_and_reason": chosen.counts(), "examples": chosen.examples()}  # fmt: skip
        if args.apply:
            done = corrections.apply(
                chosen, history=history, store=store, by=args.by or getpass.getuser(), why=args.why or ""
            )
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
    from ..core.steps.corrections import object_story

    history, store = _correction_resources(settings)
    given = args.what
    uri = given if given.startswith("s3://") else f"s3://{settings.image_bucket}/{given}"
    records = history.records_of(uri) or ([] if given.startswith("s3://") else history.records_of_user(given))
    if not records:
        print(
            f"{given}: no record in the import history (not a key of {settings.image_bucket}, nor a user id it names)"
        )
    refs = sorted({r.ref for r in records}) or [_ref_of(uri)]
    for record in records:
        when = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds") if t else "-"  # noqa: E731
        print(
            f"{record.ref}\n  status {record.status.value}, reason {record.reason or '-'}, attempts {record.attempts},"
            f" etag {record.etag}, user {record.user_id or '-'}\n  last written {when(record.updated_at)} by"
            f" {record.owner or '-'}"
        )
        if record.correction:
            print(
                f"  corrected ({record.correction}) {when(record.corrected_at)} by {record.corrected_by}:"
                f" {record.correction_why}"
            )
    for ref in dict.fromkeys(r.__class__(r.bucket, r.key) for r in refs):
        story = object_story(store, settings.output_bucket_name, settings.output_prefix, ref)
        print(f"{ref}: {len(story)} entries in the loaded dates' tables")
        for entry in story:
            print(f"  {entry['date']}  {entry['step']:<8} {entry['outcome']:<17} {entry['reason']}")
    return 0 if records else 1


def _ref_of(uri: str):
    from ..core.model import ObjectRef

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return ObjectRef(bucket, key)


def add_correction_parser(commands, name: str, help_text: str, users: bool) -> None:
    parser = commands.add_parser(name, help=help_text, description=help_text + " A dry run unless --apply.")
    if name == "retry":
        parser.add_argument("--reason", action="append", help="a reason code, e.g. UserAlreadyExists (repeatable)")
    else:
        parser.set_defaults(reason=None)
    parser.add_argument(
        "--date", action="append", help="an inventory date YYYY-MM-DD: its objects with that outcome (repeatable)"
    )
    parser.add_argument("--prefix", action="append", help="a key prefix in the image bucket (repeatable)")
    parser.add_argument("--key", action="append", help="a key in the image bucket or an s3:// URI (repeatable)")
    parser.add_argument("--keys-file", help="a file of keys, one a line")
    if users:
        parser.add_argument("--user", action="append", help="a user id (repeatable)")
    parser.add_argument("--apply", action="store_true", help="reopen them (default: only count them)")
    parser.add_argument("--why", help="why: kept in the history with each record (required with --apply)")
    parser.add_argument("--by", help="who corrects (default: the login name)")
    parser.set_defaults(run="corrections:cmd_correct")
