"""`chatlog up | down | status | logs`: the whole system on this machine."""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Any

from infra.local import LocalStack
from infra.settings import InfraSettings, cluster_profile
from infra.system import (
    Probe,
    System,
    assess,
    exit_code,
    model_verdicts,
)

DEMO_USER = "demo"


CLUSTER_HELP = (
    "the cluster profile: 3 Kafka brokers (replication 3, min ISR 2), a Ray head and worker"
    " node, 2 instances of every service, under <home>/cluster"
)


def register(sub: Any) -> None:
    up = sub.add_parser("up", help="set up what is missing and start everything")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop everything `up` started")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser(
        "status",
        help="each component's health and projection lag; exit 0 healthy, 1 down, 2 degraded",
    )
    status.set_defaults(func=cmd_status)
    logs = sub.add_parser("logs", help="tail one component's log")
    for parser in (up, down, status, logs):
        parser.add_argument("--cluster", action="store_true", help=CLUSTER_HELP)
    logs.add_argument("component", help="kafka, postgres, meilisearch or a service name")
    logs.add_argument("-n", type=int, default=50)
    logs.add_argument("--no-follow", action="store_true")
    logs.set_defaults(func=cmd_logs)


def profile(args: argparse.Namespace) -> InfraSettings:
    """The settings, with the cluster profile applied under `--cluster`."""
    settings = InfraSettings()
    if not getattr(args, "cluster", False):
        return settings
    cluster = cluster_profile(settings)
    # the cluster's data directory shares the pinned tools with the single-node one
    tools = Path(cluster.home) / "tools"
    if not tools.exists():
        tools.parent.mkdir(parents=True, exist_ok=True)
        tools.symlink_to((Path(settings.home) / "tools").absolute())
    return cluster


def cmd_up(args: argparse.Namespace) -> int:
    from infra.cli_infra import start_infra

    settings = profile(args)
    started = time.monotonic()
    stack = LocalStack(settings)
    stack.install()
    start_infra(settings)
    system = System(settings)
    print("starting " + ", ".join(c.name for c in system.services()) + " …", flush=True)
    system.start_all()
    key = demo_key(settings)
    model = settings.model_ids[0]
    base = system.base_url  # the gateway: every endpoint, reads and writes, behind one URL
    print(
        f"""
chatlog is up ({time.monotonic() - started:.0f}s).
  chat page:            {base.removesuffix("/v1")}/  (sign in with the key below)
  base URL:             {base}
  models:               {", ".join(settings.model_ids)}
  API key for user '{DEMO_USER}': {key}
  logs: chatlog logs <component>   stop: chatlog down   health: chatlog status

Try it:
  curl -N {base}/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Say hello"}}]}}'

  .venv/bin/python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base}", api_key="{key}")
for chunk in client.chat.completions.create(model="{model}", stream=True,
        messages=[{{"role": "user", "content": "Write a haiku about logs."}}]):
    print(chunk.choices[0].delta.content or "", end="", flush=True) if chunk.choices else None
print()
PY
"""
    )
    return 0


def demo_key(settings: InfraSettings) -> str:
    """The demo user's key, minted once per data directory and reused by later `up`s."""
    from infra.auth import apply_auth_ddl, create_key
    from infra.clients import pg_connect

    path = Path(settings.home).absolute() / "demo-api-key"
    if path.exists():
        return path.read_text().strip()
    with pg_connect(settings) as conn:
        apply_auth_ddl(conn)
        key = create_key(conn, DEMO_USER)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def cmd_down(args: argparse.Namespace) -> int:
    settings = profile(args)
    for name in System(settings).stop_all():
        print(f"stopped {name}")
    stopped = LocalStack(settings).stop()
    print("stopped " + (", ".join(stopped) or "no infrastructure (none was running)"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print each component's verdict; exit 0 healthy, 1 anything down, 2 degraded only."""
    from infra.lag import total_lag_by_projection

    settings = profile(args)
    probes = [Probe(s.name, s.running, s.healthy, s.where) for s in LocalStack(settings).status()]
    system = System(settings)
    probes += [
        Probe(c.name, system.running(c), system.healthy(c), system.health_url(c) or "")
        for c in system.services()
    ]
    lags: dict[str, int] | None = None
    if not any(p.healthy for p in probes if p.name.startswith("kafka")) or not all(
        p.healthy for p in probes if p.name == "postgres"
    ):
        error = "needs Kafka and PostgreSQL"
    else:
        try:
            lags, error = total_lag_by_projection(settings), ""
        except Exception as exc:  # e.g. a read model without its tables yet
            error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    verdicts = assess(probes, lags, settings.status_max_lag_events, error)
    verdicts += model_verdicts(system.models())  # the breakers: can a prompt be answered?
    for v in verdicts:
        print(f"{v.name:20} {v.state:8} {v.detail}")
    return exit_code(verdicts)


def cmd_logs(args: argparse.Namespace) -> int:
    settings = profile(args)
    home = Path(settings.home).absolute()
    if args.component == "postgres":
        path = home / "data" / "postgres" / "server.log"
    elif args.component in ("kafka", "meilisearch") or args.component.startswith(
        ("kafka-", "ray-")
    ):
        path = home / "logs" / f"{args.component}.log"
    else:
        system = System(settings)
        path = system.logfile(system.service(args.component).name)
    cmd = ["tail", "-n", str(args.n)] + ([] if args.no_follow else ["-F"]) + [str(path)]
    return subprocess.call(cmd)
