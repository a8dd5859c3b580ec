"""The durable answer on chat.answers, and a finished request staying finished when the
attempt ledger cannot be read (real Kafka, scripted engine)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from infra.clients import aio_producer
from schemas.codec import decode, encode
from schemas.events import CompletionFinished, CompletionStarted, TokenChunk, Usage
from tests.integration.inference.conftest import produce, prompt, wait_assigned, worker


async def read_all(settings, topic: str) -> list[tuple[bytes, Any]]:
    """Every record of `topic` up to its end offsets now, decoded, with its key."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        out = []
        async with asyncio.timeout(30):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    out += [(r.key, decode(r.value, r.headers)) for r in records]
        return out
    finally:
        await consumer.stop()


def started(events, request_id):
    return [
        e.attempt for e in events if isinstance(e, CompletionStarted) and e.request_id == request_id
    ]


async def test_the_final_on_chat_answers_carries_the_streamed_text(inference_settings, completions):
    async with worker(inference_settings) as w:
        await wait_assigned(w, inference_settings.partitions)
        p = prompt("the answer outlives its chunks: ünïcode 🙂")
        await produce(inference_settings, p)
        await completions.wait_for(lambda: completions.finals(p.request_id))
        answers: list[tuple[bytes, Any]] = []
        async with asyncio.timeout(30):
            while not answers:
                answers = [
                    (k, e)
                    for k, e in await read_all(
                        inference_settings, inference_settings.topics.answers
                    )
                    if e.request_id == p.request_id
                ]
    streamed = "".join(
        c.text for c in completions.events(p.request_id) if isinstance(c, TokenChunk)
    )
    (final,) = completions.finals(p.request_id)
    assert isinstance(final, CompletionFinished) and final.text == streamed
    assert streamed == "Echo: the answer outlives its chunks: ünïcode 🙂"
    ((key, answer),) = answers
    assert answer == final and answer.event_id == final.event_id  # the same event, twice
    assert key == p.conversation_id.encode()


async def test_a_ledger_that_cannot_be_read_stops_intake_instead_of_regenerating(
    inference_settings, completions
):
    settings = inference_settings.model_copy(update={"scripted_reply_repeat": 200})
    conv = "conv-ledger"
    long = prompt("long one", conversation_id=conv, max_tokens=3000)
    short = prompt("short", conversation_id=conv, max_tokens=3)
    async with worker(settings) as w1:
        await wait_assigned(w1, settings.partitions)
        await produce(settings, long, short)
        await completions.wait_for(lambda: completions.finals(short.request_id))
        await completions.wait_for(
            lambda: (
                len([e for e in completions.events(long.request_id) if isinstance(e, TokenChunk)])
                >= 2
            )
        )
    # `long` pins the commit: `short` (finished) is redelivered with it. The ledger scan
    # cannot finish in time: the replica must not guess that `short` is unfinished.
    blind = settings.model_copy(
        update={"ledger_scan_timeout_s": 0.0, "ledger_scan_tries": 2, "scripted_reply_repeat": 1}
    )
    async with worker(blind) as w2:
        async with asyncio.timeout(60):
            while w2.healthy()[0] or w2.healthy()[1] == "not started":
                await asyncio.sleep(0.05)
        ok, reason = w2.healthy()
        assert not ok and "ledger" in reason
        assert not w2.assigned
    log = [e for _, e in await read_all(settings, settings.topics.completions)]
    assert started(log, short.request_id) == [1]
    assert started(log, long.request_id) == [1]
    # a replica that can read the ledger finishes `long` as attempt 2 and leaves `short`
    fast = settings.model_copy(update={"scripted_reply_repeat": 1})
    async with worker(fast) as w3:
        await wait_assigned(w3, settings.partitions)
        await completions.wait_for(lambda: completions.finals(long.request_id))
    log = [e for _, e in await read_all(settings, settings.topics.completions)]
    assert started(log, short.request_id) == [1]
    assert started(log, long.request_id) == [1, 2]


async def test_a_final_its_replica_never_copied_to_chat_answers_is_written_there_once(
    inference_settings, completions
):
    """A replica died after its final was on chat.completions, before the copy on
    chat.answers (the durable answer, the only one once the chunks expire). The replica
    that gets the prompt again must not generate it again, and must write that final there."""
    p = prompt("answered, but not durably", conversation_id="conv-unanswered")
    settings = inference_settings
    final = CompletionFinished(request_id=p.request_id, conversation_id=p.conversation_id,
                               attempt=1, finish_reason="stop", usage=Usage(3, 2),
                               text="Echo: answered", ttft_ms=1.0)  # fmt: skip
    dead = [
        CompletionStarted(request_id=p.request_id, conversation_id=p.conversation_id, attempt=1,
                          model=settings.model_id, replica_id="replica-that-died"),
        TokenChunk(request_id=p.request_id, conversation_id=p.conversation_id, attempt=1,
                   seq=0, text="Echo: answered", token_count=2),
        final,
    ]  # fmt: skip
    await produce(settings, p, partition=0)
    producer = aio_producer(settings)
    await producer.start()
    try:
        for e in dead:  # what the dead replica wrote: chat.completions only
            value, headers = encode(e)
            await producer.send_and_wait(settings.topics.completions, value, key=e.key.encode(),
                                         headers=headers, partition=0)  # fmt: skip
    finally:
        await producer.stop()
    async with worker(settings) as w:
        await wait_assigned(w, settings.partitions)
        answers: list[Any] = []
        async with asyncio.timeout(60):
            while not answers:
                await asyncio.sleep(0.2)
                answers = [e for _, e in await read_all(settings, settings.topics.answers)
                           if e.request_id == p.request_id]  # fmt: skip
    assert answers == [final] and answers[0].event_id == final.event_id
    log = [e for _, e in await read_all(settings, settings.topics.completions)]
    assert started(log, p.request_id) == [1]  # not generated again
