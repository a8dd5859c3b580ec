"""ReplicaWorker on real Kafka with the scripted engine: the pipeline's guarantees."""

from __future__ import annotations

import asyncio

from schemas.events import CompletionFinished, CompletionStarted, TokenChunk
from tests.integration.inference.conftest import (
    cancel,
    produce,
    prompt,
    wait_assigned,
    worker,
)


def chunks(events):
    return [e for e in events if isinstance(e, TokenChunk)]


async def test_prompt_yields_started_contiguous_chunks_finished(inference_settings, completions):
    async with worker(inference_settings) as w:
        await wait_assigned(w, inference_settings.partitions)
        p = prompt("héllo wörld 🙂 — ok")
        await produce(inference_settings, p)
        await completions.wait_for(lambda: completions.finals(p.request_id))
        assert w.healthy() == (True, "ok")
    events = completions.events(p.request_id)
    assert isinstance(events[0], CompletionStarted) and events[0].attempt == 1
    assert events[0].replica_id == w.replica_id
    cs = chunks(events)
    assert [c.seq for c in cs] == list(range(len(cs)))
    assert "".join(c.text for c in cs) == "Echo: héllo wörld 🙂 — ok"
    assert all("\ufffd" not in c.text for c in cs)
    final = events[-1]
    assert isinstance(final, CompletionFinished) and final.finish_reason == "stop"
    assert final.usage.completion_tokens == len("Echo: héllo wörld 🙂 — ok".encode()) + 1
    assert final.usage.prompt_tokens > 0 and final.ttft_ms is not None
    # chunks go to the partition of the prompt, so the ledger finds them there
    assert len({e.key for e in events}) == 1


async def test_cancel_mid_generation(inference_settings, completions):
    settings = inference_settings.model_copy(update={"scripted_reply_repeat": 100})
    async with worker(settings) as w:
        await wait_assigned(w, settings.partitions)
        p = prompt("a long answer", max_tokens=5000)
        await produce(settings, p)
        await completions.wait_for(lambda: len(chunks(completions.events(p.request_id))) >= 3)
        await produce(settings, cancel(p))
        await completions.wait_for(lambda: completions.finals(p.request_id))
    final = completions.finals(p.request_id)
    assert len(final) == 1 and final[0].finish_reason == "cancelled"
    assert final[0].usage.completion_tokens < 1000


async def test_twenty_concurrent_prompts_on_one_replica_all_finish(inference_settings, completions):
    # a batch of 8 and 4 waiting: the other prompts wait in Kafka (paused partitions)
    settings = inference_settings.model_copy(update={"max_batch": 8, "max_waiting": 4})
    async with worker(settings) as w:
        await wait_assigned(w, settings.partitions)
        ps = [prompt(f"prompt number {i}") for i in range(20)]
        await produce(settings, *ps)
        peak = 0

        def all_done():
            nonlocal peak
            peak = max(peak, w.scheduler.load)
            return all(completions.finals(p.request_id) for p in ps)

        await completions.wait_for(all_done, timeout=60)
    assert peak <= 12
    for i, p in enumerate(ps):
        text = "".join(c.text for c in chunks(completions.events(p.request_id)))
        assert text == f"Echo: prompt number {i}"
        assert len(completions.finals(p.request_id)) == 1


async def test_restart_regenerates_unfinished_with_next_attempt_and_skips_finished(
    inference_settings, completions
):
    settings = inference_settings.model_copy(update={"scripted_reply_repeat": 200})
    conv = "conv-same-partition"
    long = prompt("long one", conversation_id=conv, max_tokens=3000)
    short = prompt("short", conversation_id=conv, max_tokens=3)
    async with worker(settings) as w1:
        await wait_assigned(w1, settings.partitions)
        await produce(settings, long, short)
        await completions.wait_for(lambda: completions.finals(short.request_id))
        await completions.wait_for(lambda: len(chunks(completions.events(long.request_id))) >= 2)
    # w1 left without finishing `long`: its offset was not committed past it
    fast = settings.model_copy(update={"scripted_reply_repeat": 1})
    async with worker(fast) as w2:
        await wait_assigned(w2, settings.partitions)
        await completions.wait_for(lambda: completions.finals(long.request_id))
        await asyncio.sleep(0.5)
        await completions.pump()
    started = [e for e in completions.events(long.request_id) if isinstance(e, CompletionStarted)]
    assert [s.attempt for s in started] == [1, 2]
    finals = completions.finals(long.request_id)
    assert len(finals) == 1 and finals[0].attempt == 2
    assert next(c.seq for c in chunks(completions.events(long.request_id)) if c.attempt == 2) == 0
    # `short` was finished by w1: redelivered to w2 (same partition, lower offset) but not rerun
    assert (
        len([e for e in completions.events(short.request_id) if isinstance(e, CompletionStarted)])
        == 1
    )
    assert len(completions.finals(short.request_id)) == 1


async def test_duplicate_prompt_is_not_generated_twice(inference_settings, completions):
    async with worker(inference_settings) as w:
        await wait_assigned(w, inference_settings.partitions)
        p = prompt("once")
        await produce(inference_settings, p)
        await completions.wait_for(lambda: completions.finals(p.request_id))
        await produce(inference_settings, p)  # at-least-once upstream: the same event again
        marker = prompt("after", conversation_id=p.conversation_id)
        await produce(inference_settings, marker)
        await completions.wait_for(lambda: completions.finals(marker.request_id))
    assert len(completions.finals(p.request_id)) == 1


async def test_engine_failure_and_context_overflow_emit_failed_and_worker_lives(
    inference_settings, completions
):
    settings = inference_settings.model_copy(update={"scripted_max_context": 64})
    async with worker(settings) as w:
        await wait_assigned(w, settings.partitions)
        bad, big, ok = prompt("x [[engine-fail]]"), prompt("y" * 100), prompt("fine")
        await produce(settings, bad, big)
        await completions.wait_for(
            lambda: completions.finals(bad.request_id) and completions.finals(big.request_id)
        )
        await produce(settings, ok)
        await completions.wait_for(lambda: completions.finals(ok.request_id))
        assert w.healthy()[0]
    assert completions.finals(bad.request_id)[0].error_code == "engine_error"
    overflow = completions.finals(big.request_id)[0]
    assert overflow.error_code == "context_length_exceeded" and not overflow.retryable
    assert isinstance(completions.events(big.request_id)[0], CompletionStarted)
    assert completions.finals(ok.request_id)[0].finish_reason == "stop"


async def test_health_reports_a_dead_consumer_loop(inference_settings):
    async with worker(inference_settings) as w:
        await wait_assigned(w, inference_settings.partitions)
        consume = next(t for t in w._tasks if t.get_name().endswith(":consume"))
        consume.cancel()
        await asyncio.sleep(0.05)
        ok, reason = w.healthy()
        assert not ok and "consume" in reason


async def test_cancel_reaches_a_running_request_while_partitions_are_paused(
    inference_settings, completions
):
    settings = inference_settings.model_copy(
        update={
            "max_batch": 1,
            "max_waiting": 1,
            "scripted_reply_repeat": 100,
            "scripted_token_rate": 100,
        }
    )
    async with worker(settings) as w:
        await wait_assigned(w, settings.partitions)
        conv = "conv-paused"
        a, b, c = (prompt(f"long {i}", conversation_id=conv, max_tokens=5000) for i in range(3))
        await produce(settings, a, b, c)  # a runs, b waits, c stays in Kafka: paused
        await completions.wait_for(lambda: len(chunks(completions.events(a.request_id))) >= 2)
        await asyncio.sleep(0.3)
        assert w.scheduler.load == 2
        await produce(settings, cancel(a), cancel(c))
        await completions.wait_for(lambda: completions.finals(a.request_id), timeout=5)
        assert completions.finals(a.request_id)[0].finish_reason == "cancelled"
        # c, cancelled before it was ever consumed, is dropped as soon as it arrives
        await produce(settings, cancel(b))
        await completions.wait_for(
            lambda: completions.finals(b.request_id) and completions.finals(c.request_id),
            timeout=10,
        )
    assert completions.finals(c.request_id)[0].finish_reason == "cancelled"
    assert completions.finals(c.request_id)[0].usage.completion_tokens == 0
