"""`python -m processors [run | replay | digest | status]` (configured by `CHATLOG_*` env).

`run` (the default) is the faust worker running the live projections; the others are
one-shot operator commands that `chatlog replay` / `chatlog projections` start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import UTC, datetime

from infra.cli_projections import iso_timestamp
from processors.errors import RebuildRefused
from processors.settings import ProcessorSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m processors", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the live projections (faust worker)")
    replay = sub.add_parser("replay", help="rebuild a projection from the log and switch")
    replay.add_argument("--projection", choices=["postgres", "search", "usage"], required=True)
    when = replay.add_mutually_exclusive_group()
    when.add_argument("--from-beginning", action="store_true", default=True)
    when.add_argument("--from-timestamp", type=iso_timestamp, metavar="ISO-8601")
    replay.add_argument("--quiet", action="store_true")
    digest = sub.add_parser("digest", help="a stable hash of a read model's content")
    digest.add_argument("--projection", choices=["postgres", "search", "usage"], default="postgres")
    sub.add_parser("status", help="checkpoint vs log end per projection and partition")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = ProcessorSettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command in (None, "run"):
        return _run(settings)
    if args.command == "replay":
        return _replay(settings, args)
    from processors import readout

    if args.command == "digest":
        if args.projection == "postgres":
            result = readout.postgres_digest(settings)
        elif args.projection == "usage":
            from processors.usage.rebuild import usage_digest

            result = usage_digest(settings)
        else:
            result = readout.search_digest(settings)
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
        return 0
    rows = readout.status_rows(settings)
    sys.stdout.write(f"{'projection':10} {'topic':40} {'part':>4} {'checkpoint':>10} "
                     f"{'end':>10} {'lag':>8}\n")  # fmt: skip
    for r in rows:
        cp = "-" if r["checkpoint"] is None else str(r["checkpoint"])
        sys.stdout.write(f"{r['projection']:10} {r['topic']:40} {r['partition']:>4} {cp:>10} "
                         f"{r['end']:>10} {r['lag']:>8}\n")  # fmt: skip
    return 0


def _run(settings: ProcessorSettings) -> int:
    import faust
    from prometheus_client import start_http_server

    from processors.app import create_app

    if settings.metrics_port:
        try:
            start_http_server(settings.metrics_port)
        except OSError as exc:  # a second instance on this host: project on, unobserved
            logging.getLogger("processors").warning(
                "metrics port %d unavailable (%s); set CHATLOG_METRICS_PORT",
                settings.metrics_port,
                exc,
            )
    from infra.clients import ensure_topics

    ensure_topics(settings)  # ours, with their retention, before faust declares any
    worker = faust.Worker(create_app(settings), loglevel="INFO", quiet=True)
    worker.execute_from_commandline()
    return 0


def _replay(settings: ProcessorSettings, args: argparse.Namespace) -> int:
    from processors import rebuild

    if args.from_timestamp is not None:
        since: datetime = args.from_timestamp
        events = asyncio.run(rebuild.rewind(settings, args.projection, since))
        sys.stdout.write(_rewound(args.projection, since, events) + "\n")
        return 0
    from processors.usage.rebuild import rebuild_usage

    fns = {"postgres": rebuild.rebuild_postgres, "search": rebuild.rebuild_search}
    fn = fns.get(args.projection, rebuild_usage)
    started = datetime.now(UTC)
    try:
        events = asyncio.run(fn(settings, quiet=args.quiet))
    except RebuildRefused as exc:
        sys.stderr.write(f"\n{args.projection} replay refused: {exc}\n")
        return 3
    took = (datetime.now(UTC) - started).total_seconds()
    sys.stdout.write(f"\n{args.projection}: rebuilt from {events} events in {took:.1f}s "
                     f"({events / max(took, 1e-9):,.0f} events/s), switched\n")  # fmt: skip
    return 0


def _rewound(projection: str, since: datetime, events: int) -> str:
    """What a rewind did, in words: never "rewound" when nothing was."""
    when = since.isoformat()
    if events:
        return f"{projection}: checkpoints rewound to {when}; {events:,} events to fold again"
    if since > datetime.now(UTC):
        return f"{projection}: nothing rewound: {when} is in the future"
    return f"{projection}: nothing rewound: no event at or after {when} was folded yet"


if __name__ == "__main__":
    sys.exit(main())
