"""A stream session over an in-memory durable source: slow clients are told to reconnect."""

from __future__ import annotations

import asyncio

from query_api.assembler import Gap
from query_api.durable import DurableSource
from query_api.events import StreamEvent
from query_api.hub import Hub, Snapshot
from query_api.metrics import Metrics
from query_api.settings import QuerySettings
from query_api.stream import StreamSession
from schemas.events import TokenChunk

RID = "req-s"


class NoDurable(DurableSource):
    """Postgres and Kafka backfill both empty: only the hub speaks."""

    def __init__(self) -> None:
        pass

    async def initial_events(self, request_id: str, snap: Snapshot | None) -> list[StreamEvent]:
        return list(snap.events) if snap else []

    async def fill(self, request_id: str, gap: Gap) -> list[StreamEvent]:
        return []


def tok(seq: int) -> TokenChunk:
    return TokenChunk(
        request_id=RID, conversation_id="c", attempt=1, seq=seq, text=f"t{seq}", token_count=1
    )


async def test_an_overflowing_client_gets_an_error_with_its_resume_id() -> None:
    settings = QuerySettings(client_queue_size=2, heartbeat_s=30)
    hub = Hub(settings)
    metrics = Metrics(lambda: 0, lambda: 0, lambda: 0)
    stream = StreamSession(settings, hub, NoDurable(), metrics, RID, None).events()
    first = asyncio.ensure_future(anext(stream))
    for _ in range(5):
        await asyncio.sleep(0)
    hub._fold(tok(0), 0, 0)
    assert b"id: 1:0" in await first
    for seq in range(1, 4):  # the client reads nothing meanwhile: its queue (2) overflows
        hub._fold(tok(seq), 0, seq)
    error = await anext(stream)
    assert error.startswith(b"event: error\n") and b"slow_consumer" in error
    assert b"Last-Event-ID: 1:0" in error
    assert hub.subscriber_count == 0


async def test_an_unfillable_gap_ends_the_stream_with_an_error() -> None:
    settings = QuerySettings(heartbeat_s=30)
    hub = Hub(settings)
    hub._fold(tok(3), 0, 3)  # joined mid-way; no source has 0-2
    metrics = Metrics(lambda: 0, lambda: 0, lambda: 0)
    frames = [
        f async for f in StreamSession(settings, hub, NoDurable(), metrics, RID, None).events()
    ]
    assert len(frames) == 1 and b"stream_incomplete" in frames[0]
