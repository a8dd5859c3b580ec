"""A stream session over an in-memory durable source: slow clients are told to reconnect."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from query_api.assembler import Assembler, Gap, Out
from query_api.durable import DurableSource
from query_api.events import StreamEvent
from query_api.hub import Hub, Snapshot
from query_api.metrics import Metrics
from query_api.settings import QuerySettings
from query_api.sse import PING, chunk_frame, frame
from query_api.sse_response import SseResponse
from query_api.stream import StreamSession
from schemas.events import (
    CompletionFinished,
    TokenChunk,
    Usage,
)
from tests.unit.query_api.test_frame_writer import FlowControlledSend
from tests.unit.query_api.test_hub import prompt

RID = "req-s"


class NoDurable(DurableSource):
    """Postgres and Kafka backfill both empty: only the hub speaks."""

    def __init__(self) -> None:
        pass

    async def initial_events(self, request_id: str, snap: Snapshot | None) -> list[StreamEvent]:
        return list(snap.events) if snap else []

    async def fill(self, request_id: str, gap: Gap) -> list[StreamEvent]:
        return []


def tok(seq: int, attempt: int = 1) -> TokenChunk:
    return TokenChunk(
        request_id=RID,
        conversation_id="c",
        attempt=attempt,
        seq=seq,
        text=f"t{seq}",
        token_count=1,
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


async def test_a_waiting_client_is_told_at_once_when_it_overflows() -> None:
    settings = QuerySettings(client_queue_size=2, heartbeat_s=30)
    hub = Hub(settings)
    metrics = Metrics(lambda: 0, lambda: 0, lambda: 0)
    stream = StreamSession(settings, hub, NoDurable(), metrics, RID, None).events()
    first = asyncio.ensure_future(anext(stream))
    for _ in range(5):
        await asyncio.sleep(0)
    (sub,) = hub.fanout.subscribers[RID]
    sub.overflowed = True  # as the hub marks it, while the stream awaits events
    hub.unsubscribe(sub)
    sub.wake()
    error = await asyncio.wait_for(first, 1)
    assert b"slow_consumer" in error


async def test_an_idle_stream_gets_heartbeats_and_then_its_events() -> None:
    settings = QuerySettings(heartbeat_s=0.05)
    hub = Hub(settings)  # not started: the heartbeat timer is the stream's own
    hub._fold(tok(0), 0, 0)  # anchored from seq 0: no Postgres needed
    metrics = Metrics(lambda: 0, lambda: 0, lambda: 0)
    stream = StreamSession(settings, hub, NoDurable(), metrics, RID, None).events()
    assert b"id: 1:0" in await anext(stream)
    assert await asyncio.wait_for(anext(stream), 1) == PING
    assert await asyncio.wait_for(anext(stream), 1) == PING
    hub._fold(tok(1), 0, 1)
    assert b"id: 1:1" in await asyncio.wait_for(anext(stream), 1)


async def test_live_chunks_are_shared_pre_encoded_frames_equal_to_formatted_ones() -> None:
    settings = QuerySettings(heartbeat_s=30)
    hub = Hub(settings)
    metrics = Metrics(lambda: 0, lambda: 0, lambda: 0)
    streams = [StreamSession(settings, hub, NoDurable(), metrics, RID, None).events() for _ in "ab"]
    firsts = [asyncio.ensure_future(anext(s)) for s in streams]
    for _ in range(5):
        await asyncio.sleep(0)
    hub._fold(tok(0), 0, 0)
    a, b = [await f for f in firsts]
    assert a is b  # one bytes object for every subscriber
    # the same chunk formatted per client (a late joiner's snapshot, no pre-encoding)
    late = Assembler(RID).accept(hub.subscribe(RID)[1].events[0])  # type: ignore[union-attr]
    assert late[0].wire == a and frame(replace(late[0], wire=b"")) == a


@pytest.mark.parametrize(
    "text", ["Hel", "", 'quote " back \\ nl \n tab \t', "héllo ✓ 你好 😀", "\x00\x1f"]
)
def test_a_pre_encoded_chunk_frame_is_byte_identical_to_the_formatted_one(text: str) -> None:
    data = {"request_id": "r-ü", "attempt": 2, "seq": 17, "text": text, "token_count": 3}
    assert chunk_frame("r-ü", 2, 17, text, 3) == frame(Out("chunk", "2:17", data))


class PollCounting(NoDurable):
    def __init__(self, fail: bool) -> None:
        self.polls, self.fail = 0, fail

    async def state(self, request_id: str) -> tuple[dict[str, object] | None, list[StreamEvent]]:
        self.polls += 1
        if self.fail:
            raise TimeoutError("pool exhausted")
        return None, []


async def test_waiting_streams_poll_postgres_only_for_requests_older_than_the_hub() -> None:
    settings = QuerySettings(heartbeat_s=30, idle_poll_s=0.02)
    hub = Hub(settings)
    metrics = Metrics(lambda: 0, lambda: 0, lambda: 0)
    old, new = PollCounting(fail=True), PollCounting(fail=False)
    hub._learn_owner(prompt("req-new"))
    tasks = [
        asyncio.ensure_future(anext(StreamSession(settings, hub, d, metrics, rid, None).events()))
        for d, rid in ((old, RID), (new, "req-new"))
    ]
    await asyncio.sleep(0.2)
    assert old.polls >= 3  # failing polls do not end the stream: it polls again
    assert new.polls == 0  # the hub saw it submitted: it will see its end too
    assert not any(t.done() for t in tasks)
    hub._fold(tok(0), 0, 0)
    assert b"id: 1:0" in await asyncio.wait_for(tasks[0], 1)
    for t in tasks:
        t.cancel()


async def test_chunks_the_hub_writes_itself_keep_the_exact_sequence() -> None:
    """Live in-order chunks are written by the hub after its batch (no stream wake-up);
    a paused socket, a new attempt and the end go through the stream, in order."""
    settings = QuerySettings(heartbeat_s=30)
    hub = Hub(settings)
    metrics = Metrics(lambda: 0, lambda: 0, lambda: 0)
    session = StreamSession(settings, hub, NoDurable(), metrics, RID, None)
    send = FlowControlledSend()
    gone = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, str]:
        await gone
        return {"type": "http.disconnect"}

    response = SseResponse(session.events, headers={})
    served = asyncio.ensure_future(response({"type": "http"}, receive, send))  # type: ignore[arg-type]
    for _ in range(5):
        await asyncio.sleep(0)
    hub._fold(tok(0), 0, 0)  # the first chunk starts attempt 1: through the stream
    for _ in range(5):
        await asyncio.sleep(0)
    written = len(send.bodies)
    for seq in range(1, 4):  # one batch of three chunks ...
        hub._fold(tok(seq), 0, seq)
    hub.write_held()  # ... as the hub ends it: one write, without awaiting the stream
    assert send.bodies[written:] == [
        b"".join(chunk_frame(RID, 1, s, f"t{s}", 1) for s in (1, 2, 3))
    ]
    send.drained.clear()  # the client stops reading: writes now wait for a drain
    hub._fold(tok(4), 0, 4)
    hub.write_held()  # suspends: finished by a task, later chunks queue for the stream
    for seq in range(5, 7):
        hub._fold(tok(seq), 0, seq)
    hub._fold(tok(0, attempt=2), 0, 7)  # a retry: the stream writes the reset
    hub.write_held()
    send.drained.set()
    for _ in range(5):
        await asyncio.sleep(0)
    hub._fold(tok(1, attempt=2), 0, 8)
    hub.write_held()
    usage = Usage(prompt_tokens=1, completion_tokens=2)
    hub._fold(
        CompletionFinished(
            request_id=RID, conversation_id="c", attempt=2, finish_reason="stop", usage=usage
        ),
        0,
        9,
    )
    await asyncio.wait_for(served, 1)
    body = b"".join(send.bodies)
    ids = [line[4:] for line in body.decode().split("\n") if line.startswith("id: ")]
    assert ids == [f"1:{s}" for s in range(7)] + ["2:0", "2:1", "2:done"]
    assert body.count(b"event: reset\n") == 1
    assert body.index(b"event: reset\n") < body.index(b"id: 2:0\n")
    assert hub.subscriber_count == 0
