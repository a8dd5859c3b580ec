"""`chatlog replay` and `chatlog projections digest|status`: run `python -m processors ...`.

The CLI never imports the processors: it starts them as a process with the same
environment, so the operator's `CHATLOG_*` settings reach them unchanged.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any


def iso_timestamp(text: str) -> datetime:
    """An ISO-8601 time (UTC when it names no zone), or argparse's error naming the option.

    Parsed here, before the processors start: the error then comes from the command the
    operator typed (`chatlog replay`), not from the `python -m processors` it runs.
    """
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time (e.g. 2026-12-01T20:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def register(sub: Any) -> None:
    replay = sub.add_parser(
        "replay", help="rebuild a projection from the log into a new version, then switch"
    )
    replay.add_argument("--projection", choices=["postgres", "search", "usage"], required=True)
    when = replay.add_mutually_exclusive_group()
    when.add_argument("--from-beginning", action="store_true", help="full rebuild (default)")
    when.add_argument(
        "--from-timestamp",
        type=iso_timestamp,
        metavar="ISO-8601",
        help="rewind the live checkpoints to T instead",
    )
    replay.set_defaults(func=cmd_replay)

    projections = sub.add_parser("projections", help="inspect the read models")
    verbs = projections.add_subparsers(dest="verb", required=True)
    digest = verbs.add_parser("digest", help="a stable hash of a read model's content")
    digest.add_argument("--projection", choices=["postgres", "search", "usage"], default="postgres")
    digest.set_defaults(func=cmd_digest)
    verbs.add_parser("status", help="checkpoint vs log end per partition").set_defaults(
        func=cmd_status
    )


def _processors(*args: str) -> int:
    return subprocess.call([sys.executable, "-m", "processors", *args])


def cmd_replay(args: argparse.Namespace) -> int:
    when = args.from_timestamp
    extra = ["--from-timestamp", when.isoformat()] if when else []
    return _processors("replay", "--projection", args.projection, *extra)


def cmd_digest(args: argparse.Namespace) -> int:
    return _processors("digest", "--projection", args.projection)


def cmd_status(_: argparse.Namespace) -> int:
    return _processors("status")
