"""Helpers for inference integration tests: produce prompts, read completions, run workers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer

from inference.bootstrap import build_engine
from inference.settings import InferenceSettings
from inference.worker import ReplicaWorker
from infra.clients import aio_producer
from infra.settings import InfraSettings
from schemas.codec import decode, encode
from schemas.events import (
    CancelRequested,
    ChatMessage,
    CompletionFailed,
    CompletionFinished,
    Event,
    GenerationParams,
    PromptSubmitted,
)


@pytest.fixture
def inference_settings(infra_settings: InfraSettings) -> InferenceSettings:
    """Scripted engine, a fresh consumer group per test, fast commits."""
    return InferenceSettings(
        **{**infra_settings.model_dump(), "models": "scripted-echo"},
        engine="scripted",
        consumer_group=f"inference-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=6000,
        commit_interval_ms=50,
        scripted_token_rate=200,
    )


def prompt(
    text: str,
    *,
    conversation_id: str | None = None,
    max_tokens: int = 200,
    model: str = "scripted-echo",  # a replica takes only its own model's prompts
    **params,
):
    return PromptSubmitted(
        request_id=f"req-{uuid.uuid4().hex[:10]}",
        conversation_id=conversation_id or f"conv-{uuid.uuid4().hex[:8]}",
        user_id="user-1",
        model=model,
        messages=(ChatMessage("user", text),),
        params=GenerationParams(max_tokens=max_tokens, **params),
    )


def cancel(p: PromptSubmitted) -> CancelRequested:
    return CancelRequested(
        request_id=p.request_id, conversation_id=p.conversation_id, user_id="user-1"
    )


async def produce(settings: InfraSettings, *events: Event, partition: int | None = None) -> None:
    producer = aio_producer(settings)
    await producer.start()
    try:
        for event in events:
            value, headers = encode(event)
            await producer.send_and_wait(
                settings.topics.conversations,
                value=value,
                key=event.key.encode(),
                headers=[(k, v if isinstance(v, bytes) else str(v).encode()) for k, v in headers],
                partition=partition,
            )
    finally:
        await producer.stop()


class Completions:
    """Reads chat.completions from the start; `events(request_id)` in log order."""

    def __init__(self, settings: InfraSettings):
        self._consumer = AIOKafkaConsumer(
            settings.topics.completions,
            bootstrap_servers=settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.all: list[Event] = []

    async def pump(self, timeout_ms: int = 50) -> None:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            for r in records:
                self.all.append(decode(r.value, r.headers, partition=r.partition, offset=r.offset))

    def events(self, request_id: str) -> list[Event]:
        return [e for e in self.all if getattr(e, "request_id", None) == request_id]

    def finals(self, request_id: str) -> list[Event]:
        return [
            e
            for e in self.events(request_id)
            if isinstance(e, CompletionFinished | CompletionFailed)
        ]

    async def wait_for(self, cond, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                await self.pump()


@pytest.fixture
async def completions(infra_settings: InfraSettings) -> AsyncIterator[Completions]:
    c = Completions(infra_settings)
    await c._consumer.start()
    try:
        yield c
    finally:
        await c._consumer.stop()


@contextlib.asynccontextmanager
async def worker(settings: InferenceSettings, **kwargs) -> AsyncIterator[ReplicaWorker]:
    w = ReplicaWorker(settings, build_engine(settings), **kwargs)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


async def wait_assigned(w: ReplicaWorker, n: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while len(w.assigned) < n:
            await asyncio.sleep(0.05)
