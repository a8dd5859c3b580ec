"""The local launcher: start, status, stop, start again keeps data."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from infra.clients import ensure_topics, pg_connect, producer_config
from infra.harness import Services
from infra.local import LocalStack
from infra.local.kafka import JVM_MEMORY
from infra.local.meili import MAX_INDEXING_MEMORY
from infra.local.postgres import SERVER_SETTINGS
from infra.local.procs import read_pid
from infra.settings import InfraSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory):
    if services.source != "local":
        pytest.skip("the launcher is what runs services without Docker")
    home = Path(".chatlog/test-launcher").absolute()
    # Below the kernel's ephemeral range (32768-60999): a port up there can be held by any
    # client connection's local end, and the server's bind then fails (a CI run saw it).
    settings = InfraSettings(
        home=home,
        kafka_bootstrap="127.0.0.1:23092",
        postgres_url="postgresql://chatlog@127.0.0.1:23432/chatlog",
        meili_url="http://127.0.0.1:23700",
        topic_prefix=f"launcher-{uuid.uuid4().hex[:6]}.",
    )
    # Share the session's pinned tools instead of fetching them again.
    tools = home / "tools"
    home.mkdir(parents=True, exist_ok=True)
    if not tools.exists():
        tools.symlink_to(services.home / "tools")
    local = LocalStack(settings)
    yield local
    local.stop()


def test_start_status_stop_start_keeps_data(stack: LocalStack) -> None:
    settings = stack.settings
    stack.start()
    assert all(s.healthy for s in stack.status())
    assert_memory_budgets(stack)

    topic = settings.topics.conversations
    producer = Producer(producer_config(settings))
    producer.produce(topic, key="k", value=b"survives")
    assert producer.flush(15) == 0
    with pg_connect(settings) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS survivor (v text)")
        conn.execute("INSERT INTO survivor VALUES ('row')")

    assert set(stack.stop()) == {"kafka", "postgres", "meilisearch"}
    assert not any(s.running for s in stack.status())

    stack.start()
    ensure_topics(settings)
    with pg_connect(settings) as conn:
        assert ("row",) in conn.execute("SELECT v FROM survivor").fetchall()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": str(uuid.uuid4()),
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    values: list[bytes | None] = []
    deadline = time.monotonic() + 30
    while not values and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            values.append(msg.value())
    consumer.close()
    assert values == [b"survives"]


def assert_memory_budgets(stack: LocalStack) -> None:
    """What the launcher started runs with its budget (README "Memory budget")."""
    with pg_connect(stack.settings) as conn:
        shown = {
            name: conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            for name in SERVER_SETTINGS
        }
    assert {name: row[0] if row else None for name, row in shown.items()} == SERVER_SETTINGS
    assert stack.meili is not None
    for pidfile, flags in (
        (stack.kafka.pidfile, list(JVM_MEMORY)),
        (stack.meili.pidfile, ["--max-indexing-memory", MAX_INDEXING_MEMORY]),
    ):
        pid = read_pid(pidfile)
        assert pid is not None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert all(f in argv for f in flags), argv
