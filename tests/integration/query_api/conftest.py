"""A real query API (uvicorn on an ephemeral port) over the module's real services, plus
helpers that write what the other services would: events to Kafka, rows as the projection
writes them (per the read-model semantics of the shared brief)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer

from infra.auth import create_key
from infra.clients import aio_producer, pg_connect
from infra.settings import InfraSettings
from query_api import QuerySettings, create_app
from schemas import encode
from schemas.events import Event

pytestmark = pytest.mark.integration


def query_settings(infra: InfraSettings, **overrides: Any) -> QuerySettings:
    base = infra.model_dump()
    base.update(
        heartbeat_s=1.0,
        projection_wait_s=0.3,
        owner_wait_s=3.0,
        idle_poll_s=0.3,
        startup_attempts=3,
    )
    base.update(overrides)
    return QuerySettings(**base)


@contextlib.asynccontextmanager
async def serve(settings: QuerySettings) -> AsyncIterator[str]:
    """The app under uvicorn on an ephemeral port, lifespan included; yields its base URL."""
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Users:
    keys: dict[str, str] = field(default_factory=dict)

    def headers(self, user: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[user]}", **extra}


@pytest.fixture(scope="module")
def users(infra_settings: InfraSettings) -> Users:
    with pg_connect(infra_settings, autocommit=True) as conn:
        return Users({u: create_key(conn, u) for u in ("alice", "bob")})


@pytest.fixture(scope="module")
async def producer(infra_settings: InfraSettings) -> AsyncIterator[AIOKafkaProducer]:
    p = aio_producer(infra_settings)
    await p.start()
    yield p
    await p.stop()


async def produce(producer: AIOKafkaProducer, topic: str, *events: Event) -> None:
    for event in events:
        value, headers = encode(event)
        await producer.send(
            topic,
            value,
            key=event.key.encode(),
            headers=[(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in headers],
        )
    await producer.flush()


@pytest.fixture(scope="module")
def db(infra_settings: InfraSettings) -> Iterator[psycopg.Connection[Any]]:
    with pg_connect(infra_settings, autocommit=True) as conn:
        yield conn


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Projection:
    """Writes rows the way the processors' projection would (shared brief semantics)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def prompt(
        self,
        user: str,
        conversation_id: str,
        request_id: str,
        content: str,
        at: datetime | None = None,
        model: str = "m",
    ) -> datetime:
        at = at or datetime.now(UTC)
        c = self.conn
        # A continuation follows the conversation's current leaf (the tree of issue #15).
        prev = c.execute(
            "SELECT current_request_id FROM chatlog.conversations WHERE id = %s",
            (conversation_id,),
        ).fetchone()
        c.execute(
            """INSERT INTO chatlog.conversations (id, user_id, created_at, updated_at,
                                                  last_request_id, current_request_id)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (id) DO UPDATE SET updated_at = EXCLUDED.updated_at,
                                              last_request_id = EXCLUDED.last_request_id,
                                              current_request_id = EXCLUDED.current_request_id""",
            (conversation_id, user, at, at, request_id, request_id),
        )
        c.execute(
            """INSERT INTO chatlog.messages (id, conversation_id, request_id, role, content, status, created_at)
               VALUES (%s, %s, %s, 'user', %s, 'finished', %s),
                      (%s, %s, %s, 'assistant', '', 'queued', %s)""",
            (
                f"{request_id}:user",
                conversation_id,
                request_id,
                content,
                at,
                f"{request_id}:assistant",
                conversation_id,
                request_id,
                at + timedelta(milliseconds=1),
            ),
        )
        c.execute(
            """INSERT INTO chatlog.completions (request_id, conversation_id, user_id, status, model,
                                                created_at, updated_at, parent_request_id,
                                                origin_request_id)
               VALUES (%s, %s, %s, 'queued', %s, %s, %s, %s, %s)""",
            (
                request_id,
                conversation_id,
                user,
                model,
                at,
                at,
                prev[0] if prev else None,
                request_id,
            ),
        )
        return at

    def chunks(self, request_id: str, attempt: int, texts: list[str], start: int = 0) -> None:
        c = self.conn
        c.execute(
            "DELETE FROM chatlog.chunks WHERE request_id = %s AND attempt < %s",
            (request_id, attempt),
        )
        for i, text in enumerate(texts, start):
            c.execute(
                "INSERT INTO chatlog.chunks VALUES (%s, %s, %s, %s, 1)",
                (request_id, attempt, i, text),
            )
        c.execute(
            """UPDATE chatlog.completions SET status = 'streaming', attempt = %s WHERE request_id = %s""",
            (attempt, request_id),
        )
        c.execute(
            """UPDATE chatlog.messages SET status = 'streaming', attempt = %s, last_seq = %s,
                      content = (SELECT string_agg(text, '' ORDER BY seq) FROM chatlog.chunks
                                  WHERE request_id = %s AND attempt = %s)
                WHERE id = %s""",
            (attempt, start + len(texts) - 1, request_id, attempt, f"{request_id}:assistant"),
        )

    def finish(
        self,
        request_id: str,
        attempt: int,
        reason: str = "stop",
        prompt_tokens: int = 3,
        completion_tokens: int = 5,
    ) -> None:
        c = self.conn
        usage = json.dumps({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})
        c.execute(
            """UPDATE chatlog.completions SET status = 'finished', attempt = %s, finish_reason = %s,
                      usage = %s, ttft_ms = 12.5, updated_at = now() WHERE request_id = %s""",
            (attempt, reason, usage, request_id),
        )
        c.execute(
            """UPDATE chatlog.messages SET status = 'finished', finished_at = now() WHERE id = %s""",
            (f"{request_id}:assistant",),
        )


@pytest.fixture(scope="module")
def projection(db: psycopg.Connection[Any]) -> Projection:
    return Projection(db)


@dataclass
class Sse:
    event: str
    id: str | None
    data: dict[str, Any]


async def read_sse(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    *,
    until_end: bool = True,
    max_events: int | None = None,
    timeout: float = 20.0,
    sink: list[Sse] | None = None,
) -> list[Sse]:
    """Read an SSE stream until done/error (or `max_events`); comments are skipped.
    Events are appended to `sink` as they arrive, when given."""
    events: list[Sse] = [] if sink is None else sink

    async def run() -> None:
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                    continue
                if not fields:
                    continue
                events.append(Sse(fields["event"], fields.get("id"), json.loads(fields["data"])))
                fields = {}
                if max_events is not None and len(events) >= max_events:
                    return
                if until_end and events[-1].event in ("done", "error"):
                    return

    await asyncio.wait_for(run(), timeout)
    return events


def text_of(events: list[Sse]) -> str:
    """The text a client shows: chunks, restarted by every reset."""
    text = ""
    for e in events:
        if e.event == "reset":
            text = ""
        elif e.event == "chunk":
            text += e.data["text"]
    return text
