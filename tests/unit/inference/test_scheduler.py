"""The scheduler with the scripted engine and an in-memory event sink (no Kafka)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from inference.chunker import Chunker, Pace
from inference.detok import IncrementalDetokenizer, StopMatcher
from inference.engine import EngineError
from inference.metrics import WorkerMetrics
from inference.request import Request
from inference.scheduler import Scheduler
from inference.scripted import ScriptedEngine
from schemas.events import (
    ChatMessage,
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    GenerationParams,
    PromptSubmitted,
    TokenChunk,
)


class ListSink:
    def __init__(self):
        self.events = []

    def emit(self, event, partition, on_delivered, *, answers=False):
        if not answers:
            self.events.append(event)
        on_delivered(None)

    async def room(self):
        pass

    def of(self, request_id):
        return [e for e in self.events if e.request_id == request_id]


@contextlib.asynccontextmanager
async def running(engine, max_batch=8, pace=None):
    sink, done = ListSink(), list[Request]()
    sched = Scheduler(
        engine,
        sink,
        WorkerMetrics("scripted", "r"),
        replica_id="r",
        max_batch=max_batch,
        on_done=done.append,
        pace=pace,
    )
    tasks = [asyncio.create_task(sched.run()), asyncio.create_task(sched.run_flusher())]
    try:
        yield sched, sink, done
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def request(engine, rid, text, max_tokens=100, stop=(), offset=0, pace=None, chunk_tokens=4):
    prompt = PromptSubmitted(
        request_id=rid,
        conversation_id="c-" + rid,
        user_id="u",
        model="scripted",
        messages=(ChatMessage("user", text),),
        params=GenerationParams(max_tokens, stop=stop),
    )
    return Request(
        prompt=prompt,
        attempt=1,
        partition=0,
        offset=offset,
        prepared=engine.prepare(prompt.messages, prompt.params),
        detok=IncrementalDetokenizer(engine.decode),
        stops=StopMatcher(stop),
        chunker=Chunker(pace or Pace(0.002), chunk_tokens),
    )


async def until(cond, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.002)


def text_of(events):
    chunks = [e for e in events if isinstance(e, TokenChunk)]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    return "".join(c.text for c in chunks)


async def test_started_chunks_finished_with_usage_and_stop():
    engine = ScriptedEngine(token_rate=2000)
    async with running(engine) as (sched, sink, done):
        req = request(engine, "a", "héllo 🙂")
        sched.submit(req)
        await until(lambda: done)
    events = sink.of("a")
    assert isinstance(events[0], CompletionStarted) and isinstance(events[-1], CompletionFinished)
    assert text_of(events) == "Echo: héllo 🙂"
    final = events[-1]
    assert final.finish_reason == "stop"
    assert final.usage.prompt_tokens == req.prompt_tokens
    assert final.usage.completion_tokens == len("Echo: héllo 🙂".encode()) + 1  # + EOS
    assert final.ttft_ms is not None and final.ttft_ms >= 0


async def test_length_and_stop_strings():
    engine = ScriptedEngine(token_rate=2000)
    async with running(engine) as (sched, sink, done):
        sched.submit(request(engine, "len", "abcdefgh", max_tokens=5))
        sched.submit(request(engine, "stop", "abc STOP def", stop=("STOP",), offset=1))
        await until(lambda: len(done) == 2)
    assert text_of(sink.of("len")) == "Echo:" and sink.of("len")[-1].finish_reason == "length"
    assert sink.of("len")[-1].usage.completion_tokens == 5
    assert text_of(sink.of("stop")) == "Echo: abc " and sink.of("stop")[-1].finish_reason == "stop"


async def test_cancel_running_within_one_step_and_queued_at_once():
    engine = ScriptedEngine(token_rate=100, repeat=50)
    async with running(engine, max_batch=1) as (sched, sink, done):
        sched.submit(request(engine, "run", "x"))
        sched.submit(request(engine, "queued", "y", offset=1))
        await until(lambda: any(isinstance(e, TokenChunk) for e in sink.of("run")))
        assert sched.cancel("queued")
        assert sink.of("queued")[-1].finish_reason == "cancelled"  # immediately
        assert sched.cancel("run")
        await until(lambda: len(done) == 2, timeout=0.5)  # a step is 10 ms
    final = sink.of("run")[-1]
    assert final.finish_reason == "cancelled" and final.usage.completion_tokens < 50


async def test_batch_joins_between_steps_up_to_max():
    seen: list[int] = []

    class Counting(ScriptedEngine):
        def step(self):
            seen.append(len(self._seqs))
            return super().step()

    engine = Counting(token_rate=500)
    async with running(engine, max_batch=3) as (sched, sink, done):
        for i in range(5):
            sched.submit(request(engine, f"r{i}", f"prompt {i}", offset=i))
        await until(lambda: len(done) == 5)
    assert max(seen) == 3
    for i in range(5):
        assert text_of(sink.of(f"r{i}")) == f"Echo: prompt {i}"


async def test_a_full_batch_coalesces_more_tokens_per_chunk_and_streams_the_same_text():
    """40 requests of 100 tokens at 200 tokens/s: token by token that is 4,000 chunk events
    in 0.5 s; the pace's budget (400 events/s over 40 running: one chunk per 100 ms
    each) sends a few per request instead, the first still at once."""

    async def run(pace):
        engine = ScriptedEngine(token_rate=200, repeat=10)
        async with running(engine, max_batch=40, pace=pace) as (sched, sink, done):
            for i in range(40):
                sched.submit(
                    request(engine, f"r{i}", "abcde", offset=i, pace=pace, chunk_tokens=64)
                )
            await until(lambda: len(done) == 40, timeout=20)
        return sink

    paced = await run(Pace(0.002, events_per_s=400, max_s=0.25))
    unpaced = await run(Pace(0.002))
    for i in range(40):
        assert (
            text_of(paced.of(f"r{i}"))
            == text_of(unpaced.of(f"r{i}"))
            == ("Echo: abcde " * 10)[:100]
        )
        first = next(e for e in paced.of(f"r{i}") if isinstance(e, TokenChunk))
        assert first.token_count == 1  # time to first token: not held back
    chunks = [len([e for e in s.events if isinstance(e, TokenChunk)]) for s in (paced, unpaced)]
    assert chunks[0] * 4 < chunks[1], chunks


def test_pace_stretches_with_the_batch_within_its_bounds():
    pace = Pace(0.005, events_per_s=400, max_s=0.25)
    assert pace.interval == 0.005
    pace.update(1)  # 1 / 400 s is below the base
    assert pace.interval == 0.005
    pace.update(40)
    assert pace.interval == 0.1
    pace.update(1000)
    assert pace.interval == 0.25
    pace.update(0)
    assert pace.interval == 0.005
    fixed = Pace(0.005)
    fixed.update(1000)
    assert fixed.interval == 0.005


async def test_engine_failure_fails_the_batch_and_the_scheduler_lives_on():
    engine = ScriptedEngine(token_rate=1000)
    async with running(engine) as (sched, sink, done):
        sched.submit(request(engine, "bad", "boom [[engine-fail]]"))
        await until(lambda: len(done) == 1)
        sched.submit(request(engine, "good", "fine", offset=1))
        await until(lambda: len(done) == 2)
    failed = sink.of("bad")[-1]
    assert isinstance(failed, CompletionFailed) and failed.error_code == "engine_error"
    assert sink.of("good")[-1].finish_reason == "stop"


def test_context_length_exceeded_is_typed():
    engine = ScriptedEngine(max_context=16)
    with pytest.raises(EngineError) as info:
        engine.prepare([ChatMessage("user", "x" * 100)], GenerationParams(10))
    assert info.value.code == "context_length_exceeded" and not info.value.retryable
