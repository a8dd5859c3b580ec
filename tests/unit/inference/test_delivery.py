"""Undelivered events fail their attempt, which runs again; the publisher's queue is bounded.

The scheduler runs with the scripted engine and an in-memory sink that can refuse events
(what an unacknowledged Kafka send looks like to it); the publisher runs with an
in-memory producer whose sends the test acknowledges or fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from inference.metrics import WorkerMetrics
from inference.publisher import Publisher
from inference.request import Request
from inference.scheduler import Scheduler
from inference.scripted import ScriptedEngine
from schemas.events import (
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    TokenChunk,
)
from tests.unit.inference.test_scheduler import request, until


class FlakySink:
    """Refuses the events `refuse(event)` says; keeps what it accepted, per topic."""

    def __init__(self, refuse):
        self.refuse = refuse
        self.events: list[Any] = []  # chat.completions
        self.answers: list[Any] = []
        self.refused: list[Any] = []
        self.open = asyncio.Event()
        self.open.set()

    def emit(self, event, partition, on_delivered, *, answers=False):
        if self.refuse(event, answers):
            self.refused.append(event)
            asyncio.get_running_loop().call_soon(on_delivered, RuntimeError("not acked"))
            return
        (self.answers if answers else self.events).append(event)
        asyncio.get_running_loop().call_soon(on_delivered, None)

    async def room(self):
        await self.open.wait()


@contextlib.asynccontextmanager
async def running(engine, sink, retries=3):
    done: list[Request] = []
    sched = Scheduler(
        engine,
        sink,
        WorkerMetrics("scripted", "r"),
        replica_id="r",
        max_batch=8,
        on_done=done.append,
        delivery_retries=retries,
        retry_backoff_s=0.001,
    )
    tasks = [asyncio.create_task(sched.run()), asyncio.create_task(sched.run_flusher())]
    try:
        yield sched, done
    finally:
        sched.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def of(events, cls, attempt=None):
    return [e for e in events if isinstance(e, cls) and attempt in (None, e.attempt)]


def streamed(events, attempt):
    return "".join(c.text for c in of(events, TokenChunk, attempt))


async def test_lost_chunk_runs_the_prompt_again_as_the_next_attempt():
    def refuse(e, answers):
        return isinstance(e, TokenChunk) and e.attempt == 1 and e.seq == 2

    sink, engine = FlakySink(refuse), ScriptedEngine(token_rate=2000)
    async with running(engine, sink) as (sched, done):
        sched.submit(request(engine, "a", "hello there"))
        await until(lambda: done)
    assert [r.attempt for r in done] == [2]
    assert of(sink.events, CompletionFinished, 1) == []  # never "finished" with a gap
    (final,) = of(sink.events, CompletionFinished)
    assert final.attempt == 2 and final.text == streamed(sink.events, 2) == "Echo: hello there"
    assert [c.seq for c in of(sink.events, TokenChunk, 2)] == list(
        range(len(of(sink.events, TokenChunk, 2)))
    )
    assert sink.answers == [final]  # the durable answer: only the whole attempt's final


async def test_lost_final_on_either_topic_runs_the_prompt_again():
    for lost_on_answers in (False, True):

        def refuse(e, answers, where=lost_on_answers):
            return isinstance(e, CompletionFinished) and e.attempt == 1 and answers == where

        sink, engine = FlakySink(refuse), ScriptedEngine(token_rate=2000)
        async with running(engine, sink) as (sched, done):
            sched.submit(request(engine, "f", "final"))
            await until(lambda: done)
        assert [r.attempt for r in done] == [2]
        assert [e.attempt for e in sink.answers] == [2]
        assert sink.answers[0].text == streamed(sink.events, 2) == "Echo: final"


async def test_attempts_lost_again_and_again_end_in_a_retryable_failure():
    sink = FlakySink(lambda e, answers: isinstance(e, TokenChunk))  # no chunk ever arrives
    engine = ScriptedEngine(token_rate=2000)
    async with running(engine, sink, retries=2) as (sched, done):
        sched.submit(request(engine, "x", "doomed"))
        await until(lambda: done)
    assert [s.attempt for s in of(sink.events, CompletionStarted)] == [1, 2, 3, 4]
    assert of(sink.events, CompletionFinished) == []
    (failed,) = of(sink.events, CompletionFailed)
    assert (failed.attempt, failed.error_code, failed.retryable) == (4, "delivery_failed", True)
    assert sink.answers == [failed] and [r.attempt for r in done] == [4]


async def test_cancel_while_a_lost_attempt_waits_cancels_the_next_one():
    sink = FlakySink(lambda e, answers: isinstance(e, CompletionStarted) and e.attempt == 1)
    engine = ScriptedEngine(token_rate=200, repeat=50)
    async with running(engine, sink) as (sched, done):
        sched.submit(request(engine, "c", "long"))
        await until(lambda: sink.refused)
        sched.cancel("c")
        await until(lambda: done)
    (final,) = of(sink.events, CompletionFinished)
    assert final.attempt == 2 and final.finish_reason == "cancelled"


async def test_generation_waits_while_the_sink_has_no_room():
    sink = FlakySink(lambda e, answers: False)
    sink.open.clear()
    engine = ScriptedEngine(token_rate=2000)
    async with running(engine, sink) as (sched, done):
        sched.submit(request(engine, "w", "wait"))
        await until(lambda: of(sink.events, CompletionStarted))
        await asyncio.sleep(0.05)
        assert of(sink.events, TokenChunk) == []  # no decode step without room
        sink.open.set()
        await until(lambda: done)
    assert streamed(sink.events, 1) == "Echo: wait"


class MemoryProducer:
    """The AIOKafkaProducer calls the publisher makes; each send's future is the test's."""

    def __init__(self):
        self.sent: list[tuple[str, int, asyncio.Future[None]]] = []

    async def start(self):
        pass

    async def stop(self):
        pass

    async def partitions_for(self, topic):
        return {0, 1, 2}

    async def send(self, topic, *, value, key, headers, partition):
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, fut))
        return fut

    async def flush(self):
        pass


def chunk(i: int, text: str = "x") -> TokenChunk:
    return TokenChunk(
        request_id="r", conversation_id="c", attempt=1, seq=i, text=text, token_count=1
    )


async def test_publisher_queue_is_bounded_by_count_and_bytes():
    metrics = WorkerMetrics("m", "r")
    producer = MemoryProducer()
    pub = Publisher(
        lambda: producer, "comp", "ans", max_events=3, max_bytes=10_000, metrics=metrics
    )  # type: ignore[arg-type]
    await pub.start()
    outcomes: list[BaseException | None] = []
    try:
        for i in range(3):
            pub.emit(chunk(i), 4, outcomes.append)
        room = asyncio.create_task(pub.room())
        await until(lambda: len(producer.sent) == 3)
        assert not room.done() and pub.events == 3
        assert metrics.publisher_events._value.get() == 3
        producer.sent[0][2].set_result(None)  # one acknowledged: room again
        await asyncio.wait_for(room, 5)
        producer.sent[1][2].set_exception(RuntimeError("broker said no"))
        await until(lambda: len(outcomes) == 2)
        assert outcomes[0] is None and isinstance(outcomes[1], RuntimeError)
        assert [(t, p) for t, p, _ in producer.sent] == [("comp", 1)] * 3  # 4 % 3 partitions

        pub.emit(chunk(9, "y" * 20_000), 0, outcomes.append)  # one big event fills the bytes
        assert pub.bytes > 10_000 and metrics.publisher_bytes._value.get() == pub.bytes
        big = asyncio.create_task(pub.room())
        await until(lambda: len(producer.sent) == 4)
        assert not big.done()
        producer.sent[3][2].set_result(None)
        await asyncio.wait_for(big, 5)
        pub.emit(chunk(10), 0, outcomes.append, answers=True)
        await until(lambda: len(producer.sent) == 5)
        assert producer.sent[4][0] == "ans"
    finally:
        for _, _, fut in producer.sent:
            if not fut.done():
                fut.cancel()
        await pub.stop()
