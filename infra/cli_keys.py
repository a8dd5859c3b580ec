"""`chatlog keys create --user NAME`: mint an API key (printed once)."""

from __future__ import annotations

import argparse
from typing import Any

from infra.auth import apply_auth_ddl, create_key
from infra.clients import pg_connect
from infra.settings import InfraSettings


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys")
    verbs = keys.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create a key for a user and print it")
    create.add_argument("--user", required=True)
    create.set_defaults(func=cmd_create)


def cmd_create(args: argparse.Namespace) -> int:
    with pg_connect(InfraSettings()) as conn:
        apply_auth_ddl(conn)
        print(create_key(conn, args.user))
    return 0
