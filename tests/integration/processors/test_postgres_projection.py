"""The Postgres and search projections on real Kafka, Postgres and Meilisearch."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from confluent_kafka import Consumer

from infra.clients import pg_connect
from infra.settings import InfraSettings
from processors import metrics
from processors.pg_projection import PostgresProjection
from processors.readout import postgres_digest, search_documents, status_rows
from processors.rebuild import rebuild_postgres, rebuild_search, rewind
from processors.runner import Runner
from processors.script import EPOCH, Clock, exchange
from processors.search_projection import SearchProjection
from schemas.codec import encode
from schemas.events import (
    CancelRequested,
    ChatMessage,
    CompletionFinished,
    CompletionStarted,
    ConversationDeleted,
    ConversationRenamed,
    Event,
    GenerationParams,
    PromptSubmitted,
    TokenChunk,
    Usage,
)
from tests.integration.processors.support import (
    TcpProxy,
    fold_to_end,
    processor_settings,
    publish,
)

pytestmark = pytest.mark.integration


def scripted() -> list[Event]:
    """Prompt/chunks/finish; a second attempt; a cancel; a rename; a delete (+ a late chunk)."""
    clock = Clock()
    ev: list[Event] = []
    ev += exchange(clock, conversation_id="c1", request_id="r1", user_id="alice",
                   prompt="What is Kafka?", answer=["Kafka ", "is a ", "log."])  # fmt: skip
    ev += exchange(clock, conversation_id="c1", request_id="r2", user_id="alice",
                   prompt="And Postgres?", answer=["Post"], finish=False)  # fmt: skip
    ev += exchange(clock, conversation_id="c1", request_id="r2", user_id="alice", prompt="",
                   answer=["Postgres ", "stores rows."], attempt=2, with_prompt=False)  # fmt: skip
    ev += exchange(clock, conversation_id="c1", request_id="r3", user_id="alice",
                   prompt="Tell a story", answer=["Once"], finish=False)  # fmt: skip
    ev.append(CancelRequested(request_id="r3", conversation_id="c1", user_id="alice",
                              occurred_at=clock()))  # fmt: skip
    ev.append(CompletionFinished(request_id="r3", conversation_id="c1", attempt=1,
                                 finish_reason="cancelled", usage=Usage(3, 1), ttft_ms=4.0,
                                 occurred_at=clock()))  # fmt: skip
    ev.append(ConversationRenamed(conversation_id="c1", user_id="alice", title="Databases",
                                  occurred_at=clock()))  # fmt: skip
    ev += exchange(clock, conversation_id="c2", request_id="r4", user_id="alice",
                   prompt="secret plan", answer=["hidden"])  # fmt: skip
    ev.append(ConversationDeleted(conversation_id="c2", user_id="alice", occurred_at=clock()))
    ev.append(TokenChunk(request_id="r4", conversation_id="c2", attempt=1, seq=1,
                         text=" resurrected?", token_count=1, occurred_at=clock()))  # fmt: skip
    return ev


@pytest.fixture(scope="module")
def settings(infra_settings: InfraSettings):  # type: ignore[no-untyped-def]
    return processor_settings(infra_settings)


@pytest.fixture(scope="module")
async def projected(settings):  # type: ignore[no-untyped-def]
    events = scripted()
    publish(settings, events)
    await fold_to_end(settings, search=True)
    return events


def _rows(settings, sql: str) -> list[tuple[object, ...]]:
    with pg_connect(settings) as conn:
        return conn.execute(sql).fetchall()


async def test_scripted_conversation_rows(settings, projected) -> None:
    t = {e.event_id: e.occurred_at for e in projected}
    rename = next(e for e in projected if isinstance(e, ConversationRenamed))
    assert _rows(settings, "SELECT id, user_id, title, status, last_request_id, updated_at"
                           " FROM chatlog.conversations") == [
        ("c1", "alice", "Databases", "active", "r3", t[rename.event_id])
    ]  # fmt: skip
    assert _rows(settings, "SELECT id, role, content, status, attempt, last_seq, tokens"
                           " FROM chatlog.messages ORDER BY created_at") == [
        ("r1:user", "user", "What is Kafka?", "finished", 0, -1, 0),
        ("r1:assistant", "assistant", "Kafka is a log.", "finished", 1, 2, 3),
        ("r2:user", "user", "And Postgres?", "finished", 0, -1, 0),
        ("r2:assistant", "assistant", "Postgres stores rows.", "finished", 2, 1, 2),
        ("r3:user", "user", "Tell a story", "finished", 0, -1, 0),
        ("r3:assistant", "assistant", "Once", "cancelled", 1, 0, 1),
    ]  # fmt: skip
    prompt1 = next(e for e in projected if isinstance(e, PromptSubmitted))
    created: dict[object, Any] = {
        r[0]: r[1] for r in _rows(settings, "SELECT id, created_at FROM chatlog.messages")
    }
    assert created["r1:assistant"] - created["r1:user"] == timedelta(milliseconds=1)
    assert created["r1:user"] == prompt1.occurred_at
    assert _rows(settings, "SELECT request_id, attempt, seq, text FROM chatlog.chunks"
                           " ORDER BY request_id, attempt, seq") == [
        ("r1", 1, 0, "Kafka "), ("r1", 1, 1, "is a "), ("r1", 1, 2, "log."),
        ("r2", 2, 0, "Postgres "), ("r2", 2, 1, "stores rows."), ("r3", 1, 0, "Once"),
    ]  # fmt: skip
    assert _rows(settings, "SELECT request_id, status, attempt, finish_reason, usage, user_id,"
                           " model FROM chatlog.completions ORDER BY request_id") == [
        ("r1", "finished", 1, "stop", {"prompt_tokens": 3, "completion_tokens": 3}, "alice", "m"),
        ("r2", "finished", 2, "stop", {"prompt_tokens": 3, "completion_tokens": 2}, "alice", "m"),
        ("r3", "cancelled", 1, "cancelled", {"prompt_tokens": 3, "completion_tokens": 1},
         "alice", "m"),
    ]  # fmt: skip
    assert _rows(settings, "SELECT conversation_id FROM chatlog.deleted_conversations") == [("c2",)]
    assert _rows(settings, "SELECT count(*) FROM chatlog.chunks WHERE request_id = 'r4'") == [(0,)]


async def test_scripted_conversation_search_documents(settings, projected) -> None:
    docs = search_documents(settings)
    assert [(d["id"], d["role"], d["content"], d["title"], d["user_id"]) for d in docs] == [
        ("r1-assistant", "assistant", "Kafka is a log.", "Databases", "alice"),
        ("r1-user", "user", "What is Kafka?", "Databases", "alice"),
        ("r2-assistant", "assistant", "Postgres stores rows.", "Databases", "alice"),
        ("r2-user", "user", "And Postgres?", "Databases", "alice"),
        ("r3-user", "user", "Tell a story", "Databases", "alice"),
    ]
    assert all(isinstance(d["created_at"], int) for d in docs)


async def test_duplicates_and_replays_change_nothing(settings, projected) -> None:
    before = postgres_digest(settings, streams=True)
    docs_before = search_documents(settings)
    publish(settings, projected[:7] + projected)  # redelivered events, partly twice
    await fold_to_end(settings, search=True)
    assert postgres_digest(settings, streams=True) == before
    await rewind(settings, "postgres", EPOCH)  # replay the whole log in place
    await rewind(settings, "search", EPOCH)
    rewound = [r for r in status_rows(settings) if r["projection"] in ("postgres", "search")]
    assert {r["checkpoint"] for r in rewound if r["end"]} == {0}
    await fold_to_end(settings, search=True)
    assert postgres_digest(settings, streams=True) == before
    assert search_documents(settings) == docs_before


async def test_poison_goes_to_the_dlq_and_later_events_are_projected(settings, projected) -> None:
    """Undecodable bytes are dead-lettered; a U+0000 (an older writer's) is stored as U+FFFD:
    what the command API once accepted must not make a conversation vanish."""
    clock = Clock(EPOCH + timedelta(days=1))
    good = PromptSubmitted(request_id="r9", conversation_id="c9", user_id="bob", model="m",
                           messages=(ChatMessage("user", "after the poison"),),
                           params=GenerationParams(max_tokens=8), occurred_at=clock())  # fmt: skip
    nul = PromptSubmitted(request_id="r8", conversation_id="c9", user_id="bob", model="m",
                          messages=(ChatMessage("user", "nul \x00 byte"),),
                          params=GenerationParams(max_tokens=8), occurred_at=clock())  # fmt: skip
    _, headers = encode(good)
    garbage = (settings.topics.conversations, b"c9", b"\xff\xfe not avro", headers)
    publish(settings, [garbage, nul, good])
    await fold_to_end(settings)
    assert _rows(settings, "SELECT content FROM chatlog.messages WHERE id = 'r9:user'") == [
        ("after the poison",)
    ]
    assert _rows(settings, "SELECT content FROM chatlog.messages WHERE id = 'r8:user'") == [
        ("nul \ufffd byte",)
    ]
    dead = _dlq(settings, 1)
    assert [h["dlq-error-type"] for h in dead] == [b"CorruptEvent"]
    assert {h["dlq-source-topic"] for h in dead} == {settings.topics.conversations.encode()}


def _dlq(settings, n: int) -> list[dict[str, bytes]]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "t-dlq",
                         "auto.offset.reset": "earliest"})  # fmt: skip
    consumer.subscribe([settings.topics.dlq])
    out: list[dict[str, bytes]] = []
    try:
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                pairs: list[Any] = list(msg.headers() or [])
                out.append({k: v for k, v in pairs if isinstance(v, bytes)})
            if len(out) >= n:
                break
    finally:
        consumer.close()
    return out


async def test_started_event_keeps_model_of_prompt(settings, projected) -> None:
    clock = Clock(EPOCH + timedelta(days=2))
    started = CompletionStarted(request_id="r1", conversation_id="c1", attempt=1,
                                replica_id="x", model="other", occurred_at=clock())  # fmt: skip
    publish(settings, [started])
    await fold_to_end(settings)
    assert _rows(settings, "SELECT model FROM chatlog.completions WHERE request_id='r1'") == [
        ("m",)
    ]


async def test_rebuilds_give_the_same_read_models(settings, projected) -> None:
    await fold_to_end(settings, search=True)
    digest, docs = postgres_digest(settings, streams=True), search_documents(settings)
    assert await rebuild_postgres(settings, quiet=True) > 0
    assert postgres_digest(settings, streams=True) == digest
    with pg_connect(settings) as conn:
        schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
    assert "chatlog" in schemas and not schemas & {"chatlog_next", "chatlog_old"}
    await rebuild_search(settings, quiet=True)
    assert search_documents(settings) == docs
    # Both live projections carry on from the switched checkpoints.
    await fold_to_end(settings, search=True)
    assert postgres_digest(settings, streams=True) == digest


async def test_transient_postgres_loss_pauses_without_dlq(settings, projected) -> None:
    """Kill the projector's Postgres session mid-stream: it reconnects, nothing is lost."""
    clock = Clock(EPOCH + timedelta(days=3))
    events = exchange(clock, conversation_id="c7", request_id="r7", user_id="carol",
                      prompt="still there?", answer=["yes", ", ", "still"])  # fmt: skip
    projection = PostgresProjection(settings)
    conn = await projection.connection()
    pid = conn.info.backend_pid
    dead_before = metrics.DEAD_LETTERED.labels("postgres")._value.get()
    with pg_connect(settings) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    publish(settings, events)
    runner = Runner(settings, projection, group=None, stop_at_lag=0)
    try:
        await runner.run()
    finally:
        await projection.close()
    assert _rows(settings, "SELECT content FROM chatlog.messages WHERE id = 'r7:assistant'") == [
        ("yes, still",)
    ]
    assert metrics.TRANSIENT_FAILURES.labels("postgres")._value.get() >= 1
    assert metrics.DEAD_LETTERED.labels("postgres")._value.get() == dead_before


async def test_meilisearch_outage_pauses_the_search_projection_without_loss(
    settings, projected
) -> None:
    await fold_to_end(settings, search=True)
    url = urlsplit(settings.meili_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 7700)
    await proxy.up()
    through_proxy = settings.model_copy(update={"meili_url": f"http://127.0.0.1:{proxy.port}"})
    await proxy.down()
    clock = Clock(EPOCH + timedelta(days=4))
    publish(settings, exchange(clock, conversation_id="c5", request_id="r5", user_id="dave",
                               prompt="zebra crossing", answer=["stripes"]))  # fmt: skip
    await fold_to_end(settings)  # postgres has it; search cannot reach Meilisearch
    transient_before = metrics.TRANSIENT_FAILURES.labels("search")._value.get()
    dead_before = metrics.DEAD_LETTERED.labels("search")._value.get()
    projection = SearchProjection(through_proxy)
    runner = asyncio.create_task(Runner(through_proxy, projection, group=None, stop_at_lag=0).run())
    await asyncio.sleep(2.5)
    assert not runner.done()
    assert metrics.TRANSIENT_FAILURES.labels("search")._value.get() > transient_before
    await proxy.up()  # same port: Meilisearch is back
    await asyncio.wait_for(runner, 60)
    await projection.close()
    await proxy.down()
    ids = {d["id"] for d in search_documents(settings)}
    assert {"r5-user", "r5-assistant"} <= ids
    assert metrics.DEAD_LETTERED.labels("search")._value.get() == dead_before
