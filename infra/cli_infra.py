"""`chatlog setup | infra start|stop|status | smoke`: the local Kafka/Postgres/Meilisearch."""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from infra.local import LocalStack
from infra.settings import InfraSettings


def register(sub: Any) -> None:
    setup = sub.add_parser("setup", help="fetch the pinned Kafka jars, Meilisearch, PostgreSQL")
    setup.set_defaults(func=cmd_setup)

    infra = sub.add_parser("infra", help="the local Kafka, PostgreSQL and Meilisearch")
    verbs = infra.add_subparsers(dest="verb", required=True)
    verbs.add_parser("start", help="start all three and create topics").set_defaults(func=cmd_start)
    verbs.add_parser("stop", help="stop all three").set_defaults(func=cmd_stop)
    verbs.add_parser("status", help="show each service").set_defaults(func=cmd_status)

    smoke = sub.add_parser("smoke", help="round-trip an event, a row and a search document")
    smoke.set_defaults(func=cmd_smoke)


def cmd_setup(_: argparse.Namespace) -> int:
    stack = LocalStack(InfraSettings())
    for node in stack.nodes:
        started = time.monotonic()
        node.install()
        print(f"{node.name:12} installed ({time.monotonic() - started:.1f}s)")
    return 0


def cmd_start(_: argparse.Namespace) -> int:
    start_infra(InfraSettings())
    return cmd_status(_)


def start_infra(settings: InfraSettings) -> None:
    """Start the local stack of `settings`, its topics, tables and index."""
    LocalStack(settings).start()
    from infra.auth import apply_auth_ddl
    from infra.clients import apply_read_model_ddl, ensure_search_index, pg_connect

    apply_read_model_ddl(settings)
    with pg_connect(settings) as conn:
        apply_auth_ddl(conn)
    if settings.meili_url:
        ensure_search_index(settings)


def cmd_stop(_: argparse.Namespace) -> int:
    stopped = LocalStack(InfraSettings()).stop()
    print("stopped: " + (", ".join(stopped) or "nothing was running"))
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    rows = LocalStack(InfraSettings()).status()
    for s in rows:
        state = "healthy" if s.healthy else ("running" if s.running else "stopped")
        print(f"{s.name:12} {state:8} {s.where}{'' if s.installed else '  (not installed)'}")
    return 0 if all(s.healthy for s in rows) else 1


def cmd_smoke(_: argparse.Namespace) -> int:
    """Prove the stack works end to end: Kafka round trip, Postgres query, Meilisearch search."""
    from confluent_kafka import Consumer, Producer

    from infra.clients import meili_client, pg_connect, producer_config
    from schemas import ConversationRenamed, decode, encode

    settings = InfraSettings()
    event = ConversationRenamed(conversation_id=str(uuid.uuid4()), user_id="smoke", title="smoke")
    value, headers = encode(event)
    producer = Producer(producer_config(settings))
    producer.produce(settings.topics.conversations, value=value, key=event.key, headers=headers)
    if producer.flush(10) != 0:
        raise SystemExit("kafka: produce not acknowledged")
    consumer = Consumer(
        {
            **settings.confluent_kafka_config(),
            "group.id": f"smoke-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.topics.conversations])
    deadline, seen = time.monotonic() + 30, False
    while not seen and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None and msg.key() == event.key.encode():
            seen = decode(msg.value(), msg.headers()) == event
    consumer.close()
    print(f"kafka        {'ok' if seen else 'FAILED'}")
    with pg_connect(settings) as conn:
        row = conn.execute("SELECT count(*) FROM chatlog.conversations").fetchone()
    print(f"postgres     ok ({row[0] if row else 0} conversations)")
    if settings.meili_url:
        health = meili_client(settings).health()
        print(f"meilisearch  {health.get('status')}")
    return 0 if seen else 1
