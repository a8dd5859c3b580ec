"""`chatlog`: the operator's command line. It starts services as processes, never imports them.

Each group of subcommands lives in its own `cli_*.py` module with a `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import sys

from infra import cli_infra, cli_keys, cli_projections, cli_system

GROUPS = [cli_infra, cli_keys, cli_system, cli_projections]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatlog", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI's one place to turn errors into a message
        from infra.local.procs import ServiceError

        if isinstance(exc, ServiceError):
            print(f"chatlog: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
