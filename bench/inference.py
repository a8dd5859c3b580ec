"""Benchmark of inference on the real model, one ReplicaWorker, real Kafka.

    CHATLOG_TEST_KEEP=1 .venv/bin/python -m bench.inference [--threads 2] [--tokens 48]

1. Aggregate tokens/s with 1, 4 and 16 concurrent prompts (continuous batching; each
   prompt asks for `--tokens` new tokens, greedy; usage counts from CompletionFinished).
2. Pipeline overhead: PromptSubmitted produced -> first TokenChunk consumed, minus the
   engine's own time to the first token (its prefill step), one prompt at a time.
Uses the test stack through the harness (a private topic prefix, removed afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from aiokafka import AIOKafkaConsumer

from inference.bootstrap import build_engine
from inference.request import Request
from inference.settings import InferenceSettings
from inference.worker import ReplicaWorker
from infra.clients import aio_producer
from infra.harness import isolated_settings, provide_services
from schemas.codec import decode, encode
from schemas.events import (
    ChatMessage,
    CompletionFinished,
    GenerationParams,
    PromptSubmitted,
    TokenChunk,
)

TOPICS = ["dragons", "the sea", "a robot", "autumn", "a lighthouse", "trains", "bees", "the moon"]


def make_prompt(i: int, max_tokens: int) -> PromptSubmitted:
    return PromptSubmitted(
        request_id=f"bench-{uuid.uuid4().hex[:10]}",
        conversation_id=f"conv-{uuid.uuid4().hex[:8]}",
        user_id="bench",
        model="SmolLM2-135M-Instruct",
        messages=(ChatMessage("user", f"Write a long story about {TOPICS[i % len(TOPICS)]}."),),
        params=GenerationParams(max_tokens=max_tokens, temperature=0.0),
    )


class Bench:
    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.traces: dict[str, Request] = {}
        self.first_chunk: dict[str, float] = {}
        self.finished: dict[str, CompletionFinished] = {}

    async def consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=20)
            now = time.monotonic()
            for records in batch.values():
                for r in records:
                    e = decode(r.value, r.headers)
                    if isinstance(e, TokenChunk):
                        self.first_chunk.setdefault(e.request_id, now)
                    elif isinstance(e, CompletionFinished):
                        self.finished[e.request_id] = e

    async def send(self, producer, prompts: list[PromptSubmitted]) -> dict[str, float]:
        sent = {}
        for p in prompts:
            value, headers = encode(p)
            sent[p.request_id] = time.monotonic()
            await producer.send(
                self.settings.topics.conversations, value=value, key=p.key.encode(), headers=headers
            )
        await producer.flush()
        return sent

    async def wait(self, ids: list[str]) -> None:
        while not all(i in self.finished for i in ids):
            await asyncio.sleep(0.005)


async def run(settings: InferenceSettings, tokens: int, overhead_n: int) -> None:
    bench = Bench(settings)
    worker = ReplicaWorker(
        settings,
        build_engine(settings),
        observer=lambda r: bench.traces.__setitem__(r.request_id, r),
    )
    await worker.start()
    producer = aio_producer(settings)
    await producer.start()
    consumer = AIOKafkaConsumer(
        settings.topics.completions,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="latest",
    )
    await consumer.start()
    reader = asyncio.create_task(bench.consume(consumer))
    try:
        while len(worker.assigned) < settings.partitions:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the bench consumer has its assignment and positions
        warm = [make_prompt(0, 4)]
        await bench.send(producer, warm)
        await bench.wait([p.request_id for p in warm])
        print(
            f"model={settings.model_id} threads={settings.effective_torch_threads} tokens/prompt={tokens}"
        )
        base = None
        for n in (1, 4, 16):
            prompts = [make_prompt(i, tokens) for i in range(n)]
            t0 = time.monotonic()
            await bench.send(producer, prompts)
            await bench.wait([p.request_id for p in prompts])
            dt = time.monotonic() - t0
            total = sum(bench.finished[p.request_id].usage.completion_tokens for p in prompts)
            rate = total / dt
            base = base or rate
            print(
                f"concurrent={n:2d}  tokens={total:4d}  wall={dt:6.2f}s  aggregate={rate:6.1f} tok/s  x{rate / base:.2f}"
            )
        overheads, e2e, engine = [], [], []
        for i in range(overhead_n):
            p = make_prompt(i, 2)
            sent = await bench.send(producer, [p])
            await bench.wait([p.request_id])
            trace = bench.traces[p.request_id]
            first = bench.first_chunk[p.request_id] - sent[p.request_id]
            eng = trace.engine_first_token_s or 0.0
            e2e.append(first * 1000)
            engine.append(eng * 1000)
            overheads.append((first - eng) * 1000)
        q = statistics.quantiles(overheads, n=10)
        print(
            f"pipeline overhead over {overhead_n} prompts: p50={statistics.median(overheads):.1f} ms "
            f"p90={q[-1]:.1f} ms (produce->first chunk p50={statistics.median(e2e):.1f} ms, "
            f"engine first token p50={statistics.median(engine):.1f} ms)"
        )
    finally:
        reader.cancel()
        await consumer.stop()
        await producer.stop()
        await worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--overhead-prompts", type=int, default=20)
    args = parser.parse_args()
    with provide_services() as services, isolated_settings(services, "bench_inference") as infra:
        settings = InferenceSettings(
            **infra.model_dump(),
            engine="transformers",
            device="cpu",
            torch_threads=args.threads,
            max_batch=16,
            consumer_group=f"bench-{uuid.uuid4().hex[:6]}",
        )
        asyncio.run(run(settings, args.tokens, args.overhead_prompts))


if __name__ == "__main__":
    main()
