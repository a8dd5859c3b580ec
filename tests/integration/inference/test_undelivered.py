"""Events Kafka refuses fail their attempt: never a truncated answer that claims to be
finished, never a stuck request or a pinned commit (real Kafka, scripted engine).

The fault is real: chat.completions of this module gets a `max.message.bytes` that the
small events fit in and a long answer's chunk does not, so the broker refuses it.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from schemas.events import CompletionFailed, CompletionFinished, CompletionStarted
from tests.integration.inference.conftest import produce, prompt, wait_assigned, worker
from tests.integration.inference.test_finals import read_all

LIMIT = 1500  # bytes per record batch: a Started, a short chunk or a failure fit


def limit_record_size(bootstrap: str, topic: str, limit: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry(
        "max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result(timeout=30)


async def committed_everything(settings) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.group_id)
    finally:
        await admin.close()
    topic = settings.topics.conversations
    probe = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await probe.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        ends = await probe.end_offsets(tps)
    finally:
        await probe.stop()
    return all(
        ends[tp] == 0 or (tp in committed and committed[tp].offset == ends[tp]) for tp in tps
    )


async def test_a_refused_chunk_ends_the_request_retryably_and_unpins_the_commit(
    inference_settings, completions
):
    settings = inference_settings.model_copy(
        update={
            "scripted_token_rate": 0,  # as fast as it goes
            "scripted_max_context": 100_000,
            "chunk_interval_ms": 600_000.0,  # the whole answer after the first byte: one chunk
            "chunk_max_tokens": 100_000,
            "delivery_retries": 1,
            "delivery_backoff_s": 0.05,
        }
    )
    await asyncio.to_thread(
        limit_record_size, settings.kafka_bootstrap, settings.topics.completions, LIMIT
    )
    async with worker(settings) as w:
        await wait_assigned(w, settings.partitions)
        p = prompt("z" * 2000, max_tokens=5000)
        await produce(settings, p)
        await completions.wait_for(lambda: completions.finals(p.request_id), timeout=120)
        async with asyncio.timeout(60):
            while not await committed_everything(settings):
                await asyncio.sleep(0.2)
        assert w.healthy() == (True, "ok")
    events = completions.events(p.request_id)
    assert [e.attempt for e in events if isinstance(e, CompletionStarted)] == [1, 2, 3]
    assert not [e for e in events if isinstance(e, CompletionFinished)]  # never "finished"
    (failed,) = completions.finals(p.request_id)
    assert isinstance(failed, CompletionFailed)
    assert (failed.attempt, failed.error_code, failed.retryable) == (3, "delivery_failed", True)
    answers = [e for _, e in await read_all(settings, settings.topics.answers)]
    assert [a for a in answers if a.request_id == p.request_id] == [failed]
