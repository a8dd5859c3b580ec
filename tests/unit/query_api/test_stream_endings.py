"""Every stream ends with `done` or `error`: a deleted conversation, a request the hub has
forgotten, a source that fails, a source that never answers (in-memory durable sources)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import psycopg
import pytest

from query_api.assembler import Gap
from query_api.backfill import BackfillLimiter
from query_api.events import StreamEvent
from query_api.hub import Hub, Snapshot
from query_api.metrics import Metrics
from query_api.settings import QuerySettings
from query_api.stream import StreamSession
from schemas.events import CompletionFinished, ConversationDeleted, Usage
from tests.unit.query_api.test_hub import prompt
from tests.unit.query_api.test_stream_session import RID, NoDurable, PollCounting, tok

METRICS = Metrics(lambda: 0, lambda: 0, lambda: 0)


def stream(settings: QuerySettings, hub: Hub, durable: NoDurable) -> AsyncGenerator[bytes, None]:
    return StreamSession(settings, hub, durable, METRICS, RID, None).events()


async def test_a_deleted_conversation_ends_its_streams_and_forgets_its_requests() -> None:
    settings = QuerySettings(heartbeat_s=30)
    hub = Hub(settings)
    hub._learn_owner(prompt(RID))  # conversation "c"
    hub._fold(tok(0), 0, 0)
    live = stream(settings, hub, NoDurable())
    assert b"id: 1:0" in await anext(live)
    waiting = asyncio.ensure_future(anext(live))
    hub._fold_chunk("older", "c", 0, 4, "x", 1, 0.0, 0, 9)  # a request older than the hub
    watching, _ = hub.subscribe("older")
    await asyncio.sleep(0.01)
    hub._delete_conversation(ConversationDeleted(conversation_id="c", user_id="alice"))
    error = await asyncio.wait_for(waiting, 1)
    assert error.startswith(b"event: error\n") and b'"code": "not_found"' in error
    assert hub.owner(RID) is None and hub.snapshot(RID) is None
    assert watching.deleted and hub.snapshot("older") is None
    assert hub.conversation_deleted("c") and hub.subscriber_count == 0
    hub._fold(tok(1), 0, 1)  # the generation outlives the deletion: nothing is kept
    hub._learn_owner(prompt(RID))  # nor is a redelivered prompt of it
    assert hub.snapshot(RID) is None and hub.owner(RID) is None


class DeletedRow(NoDurable):
    async def state(self, request_id: str) -> tuple[dict[str, object] | None, list[StreamEvent]]:
        return {"conversation_id": "old-c", "status": "queued"}, []


async def test_a_polling_stream_of_a_request_older_than_the_hub_ends_when_deleted() -> None:
    settings = QuerySettings(heartbeat_s=30, idle_poll_s=0.02)
    hub = Hub(settings)  # never saw the request: the stream polls Postgres
    waiting = asyncio.ensure_future(anext(stream(settings, hub, DeletedRow())))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    hub._delete_conversation(ConversationDeleted(conversation_id="old-c", user_id="alice"))
    error = await asyncio.wait_for(waiting, 1)
    assert b'"code": "not_found"' in error


async def test_a_request_whose_buffer_the_hub_dropped_is_polled_from_postgres() -> None:
    """The hub saw it submitted and finished, then forgot the buffer (TTL): only Postgres
    can end a stream opened now, so the stream must poll it (it never did: heartbeats)."""
    settings = QuerySettings(heartbeat_s=30, idle_poll_s=0.02, finished_ttl_s=0.0)
    hub = Hub(settings)
    hub._learn_owner(prompt(RID))
    hub._fold(tok(0), 0, 0)
    hub._fold(
        CompletionFinished(
            request_id=RID, conversation_id="c", attempt=1, finish_reason="stop", usage=Usage(1, 1)
        ),
        0,
        1,
    )
    assert hub.sweep(now=1e12) == 1
    durable = PollCounting(fail=False)
    waiting = asyncio.ensure_future(anext(stream(settings, hub, durable)))
    await asyncio.sleep(0.2)
    assert durable.polls >= 3
    waiting.cancel()


async def test_a_request_evicted_by_the_bounds_is_polled_from_postgres() -> None:
    settings = QuerySettings(heartbeat_s=30, idle_poll_s=0.02, hub_max_requests=1)
    hub = Hub(settings)
    hub._learn_owner(prompt(RID))
    hub._fold(tok(0), 0, 0)
    hub._fold_chunk("other", "c2", 0, 0, "x", 1, 0.0, 0, 1)  # RID is the older: evicted
    assert hub.snapshot(RID) is None and hub.buffered_requests == 1
    durable = PollCounting(fail=False)
    waiting = asyncio.ensure_future(anext(stream(settings, hub, durable)))
    await asyncio.sleep(0.2)
    assert durable.polls >= 3
    waiting.cancel()


async def test_a_stream_nothing_answers_ends_with_a_timeout_error() -> None:
    settings = QuerySettings(heartbeat_s=0.02, stream_idle_timeout_s=0.2)
    hub = Hub(settings)
    hub._learn_owner(prompt(RID))  # queued: the hub will see its end, so no polling
    frames = [f async for f in stream(settings, hub, NoDurable())]
    assert frames[-1].startswith(b"event: error\n") and b"stream_timeout" in frames[-1]
    assert set(frames[:-1]) == {b": ping\n\n"}


class Failing(NoDurable):
    def __init__(self, where: str, exc: Exception) -> None:
        self.where, self.exc = where, exc

    async def initial_events(self, request_id: str, snap: Snapshot | None) -> list[StreamEvent]:
        if self.where == "initial":
            raise self.exc
        return await super().initial_events(request_id, snap)

    async def fill(self, request_id: str, gap: Gap) -> list[StreamEvent]:
        raise self.exc


@pytest.mark.parametrize(
    ("where", "exc"),
    [
        ("initial", psycopg.OperationalError("connection lost")),
        ("fill", TimeoutError("backfill did not reach offset 12")),
        ("fill", RuntimeError("KafkaConnectionError")),
    ],
)
async def test_a_failing_source_ends_the_stream_with_an_openai_error(
    where: str, exc: Exception
) -> None:
    settings = QuerySettings(heartbeat_s=30)
    hub = Hub(settings)
    hub._fold(tok(3), 0, 3)  # joined mid-way: chunks 0-2 need a fill
    frames = [f async for f in stream(settings, hub, Failing(where, exc))]
    assert len(frames) == 1 and frames[0].startswith(b"event: error\n")
    assert b'"code": "stream_failed"' in frames[0] and b'"type": "server_error"' in frames[0]
    assert str(exc).encode() not in frames[0]  # the detail goes to the log, not the client
    assert hub.subscriber_count == 0


async def test_backfills_are_bounded_and_counted() -> None:
    limiter = BackfillLimiter(2)
    peak, release = 0, asyncio.Event()

    async def backfill() -> None:
        nonlocal peak
        async with limiter.slot():
            peak = max(peak, limiter.running)
            await release.wait()

    tasks = [asyncio.ensure_future(backfill()) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert (limiter.running, limiter.waiting) == (2, 3)
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2 and (limiter.running, limiter.waiting, limiter.total) == (0, 0, 5)
