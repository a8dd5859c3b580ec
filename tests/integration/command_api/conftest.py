"""Fixtures: the command API on this module's real Kafka topics and Postgres database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi import FastAPI

from command_api import CommandSettings, create_app
from infra.auth import create_key
from infra.clients import pg_connect
from infra.settings import InfraSettings
from schemas import Event, decode


def command_settings(infra: InfraSettings, **overrides: Any) -> CommandSettings:
    base = CommandSettings(**infra.model_dump())
    # These tests look at what gets appended: answer 202 at once unless a test says otherwise.
    return base.model_copy(
        update={"continuation_wait_s": 0.5, "default_response": "async", **overrides}
    )


@asynccontextmanager
async def running_app(
    settings: CommandSettings,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan (its `state.ctx` wired), reached in-process (no port)."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://command", timeout=30
        ) as client,
    ):
        yield app, client


@asynccontextmanager
async def running_client(settings: CommandSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan, reached in-process (no port)."""
    async with running_app(settings) as (_, client):
        yield client


@pytest.fixture(scope="module")
def settings(infra_settings: InfraSettings) -> CommandSettings:
    return command_settings(infra_settings, max_concurrent_generations=100)


@pytest.fixture(scope="module")
async def client(settings: CommandSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_client(settings) as c:
        yield c


@pytest.fixture(scope="module")
def new_user(settings: CommandSettings) -> Callable[[], tuple[str, dict[str, str]]]:
    """Mints a fresh user and the Authorization header of a new key of theirs."""

    def make() -> tuple[str, dict[str, str]]:
        user = f"user-{uuid.uuid4().hex[:8]}"
        with pg_connect(settings) as conn:
            key = create_key(conn, user)
        return user, {"Authorization": f"Bearer {key}"}

    return make


def prompt(text: str = "Hello there", **extra: Any) -> dict[str, Any]:
    return {
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def read_events(settings: CommandSettings, timeout_s: float = 5.0) -> list[tuple[bytes, Event]]:
    """Every record now in this module's chat.conversations: (key, decoded event)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"t-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    topic = settings.topics.conversations
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    ends = {}
    for p in meta.partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        ends[p] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[tuple[bytes, Event]] = []
    want = sum(ends.values())
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None or msg.error():
            continue
        event = decode(msg.value(), msg.headers(), topic=topic, offset=msg.offset())
        out.append((msg.key() or b"", event))
    consumer.close()
    return out


async def events_about(settings: CommandSettings, ident: str) -> list[tuple[bytes, Event]]:
    """The records whose event names `ident` (a request, conversation or user id)."""
    found = await asyncio.to_thread(read_events, settings)
    return [
        (k, e)
        for k, e in found
        if ident
        in (
            getattr(e, "request_id", None),
            getattr(e, "conversation_id", None),
            getattr(e, "user_id", None),
        )
    ]


def project_turn(
    settings: CommandSettings,
    *,
    request_id: str,
    conversation_id: str,
    user_id: str,
    prompt_text: str,
    answer: str,
    status: str = "finished",
) -> None:
    """Write what the processors' projection writes for one finished turn (the read
    model's documented contract), so a continuation can be composed from it."""
    now = datetime.now(UTC)
    with pg_connect(settings) as conn:
        conn.execute(
            "INSERT INTO chatlog.conversations (id, user_id, created_at, updated_at,"
            " last_request_id) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
            " SET last_request_id = EXCLUDED.last_request_id, updated_at = EXCLUDED.updated_at",
            (conversation_id, user_id, now, now, request_id),
        )
        conn.execute(
            "INSERT INTO chatlog.messages (id, conversation_id, request_id, role, content,"
            " status, attempt, created_at) VALUES (%s, %s, %s, 'user', %s, 'finished', 0, %s),"
            " (%s, %s, %s, 'assistant', %s, %s, 1, %s)",
            (
                f"{request_id}:user",
                conversation_id,
                request_id,
                prompt_text,
                now,
                f"{request_id}:assistant",
                conversation_id,
                request_id,
                answer,
                status,
                now + timedelta(milliseconds=1),
            ),
        )
        set_completion(settings, request_id, conversation_id, user_id, status)


def set_completion(
    settings: CommandSettings, request_id: str, conversation_id: str, user_id: str, status: str
) -> None:
    now = datetime.now(UTC)
    with pg_connect(settings) as conn:
        conn.execute(
            "INSERT INTO chatlog.completions (request_id, conversation_id, user_id, status,"
            " model, attempt, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, 1, %s, %s)"
            " ON CONFLICT (request_id) DO UPDATE SET status = EXCLUDED.status",
            (request_id, conversation_id, user_id, status, "SmolLM2-135M-Instruct", now, now),
        )
