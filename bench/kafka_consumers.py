"""Benchmark: the hub's Kafka consumer, aiokafka vs confluent-kafka, on a live-like trickle.

A producer process writes TokenChunk records at RATE/s (linger 5 ms, 12 partitions, as
the query API bench does); the consumer under test reads them from the live end the way
the hub does (assigned partitions, fetch wait 10 ms / min 64 KiB, batches of ≤ 2,000) and
touches value, headers, offset and partition. Reported per record: this process's CPU
(all threads: librdkafka's included) and the local broker's.

    flock /tmp/chatlog-bench.lock env CHATLOG_TEST_KEEP=1 .venv/bin/python bench/kafka_consumers.py \\
        aiokafka confluent aiokafka confluent
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from infra.harness import provide_services
from schemas import TokenChunk, encode

RATE, SECONDS, PARTITIONS = 20_000, 10.0, 12


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def produce(bootstrap: str, topic: str, go: Any) -> None:
    value, headers = encode(
        TokenChunk(
            request_id="chatcmpl-" + "a" * 32,
            conversation_id="conv-x",
            attempt=1,
            seq=5,
            text="1700000000.123456",
            token_count=1,
        )
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    go.wait()
    start, n = time.time(), 0
    while time.time() - start < SECONDS:
        delay = start + n / RATE - time.time()
        if delay > 0:
            time.sleep(delay)
        for i in range(100):
            producer.produce(topic, value, key=f"k{(n + i) % 1000}", headers=headers)
        n += 100
        producer.poll(0)
    producer.flush()


async def with_aiokafka(bootstrap: str, topic: str, go: Any) -> int:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_min_bytes=65536,
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    go.set()
    n, until = 0, time.time() + SECONDS + 1
    while time.time() < until:
        batches = await consumer.getmany(timeout_ms=200, max_records=2000)
        for tp, records in batches.items():
            for r in records:
                _ = (r.value, r.headers, r.offset, tp.partition)
                n += 1
    await consumer.stop()
    return n


def with_confluent(bootstrap: str, topic: str, go: Any) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.min.bytes": 65536,
        }
    )
    ends = []
    for p in range(PARTITIONS):
        _, high = consumer.get_watermark_offsets(CTopicPartition(topic, p), timeout=10)
        ends.append(CTopicPartition(topic, p, high))
    consumer.assign(ends)
    go.set()
    n, until = 0, time.time() + SECONDS + 1
    while time.time() < until:
        first = consumer.poll(0.2)
        records = [first, *consumer.consume(1999, 0)] if first is not None else []
        for m in records:
            _ = (m.value(), m.headers(), m.offset(), m.partition())
            n += 1
    consumer.close()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kinds", nargs="+", choices=["aiokafka", "confluent"])
    args = parser.parse_args()
    with provide_services() as services:
        bootstrap = services.kafka_bootstrap
        broker = int((services.home / "run" / "kafka.pid").read_text().split()[0])
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for kind in args.kinds:
            topic = f"bench-consumers-{uuid.uuid4().hex[:6]}"
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
            time.sleep(1)
            go = mp.get_context("spawn").Event()
            producer = mp.get_context("spawn").Process(target=produce, args=(bootstrap, topic, go))
            producer.start()
            cpu0, broker0 = time.process_time(), cpu_seconds(broker)
            if kind == "aiokafka":
                n = asyncio.run(with_aiokafka(bootstrap, topic, go))
            else:
                n = with_confluent(bootstrap, topic, go)
            cpu, broker_cpu = time.process_time() - cpu0, cpu_seconds(broker) - broker0
            producer.join()
            admin.delete_topics([topic])[topic].result()
            print(
                f"{kind:9s} records {n}  consumer {1e6 * cpu / n:.2f} µs/record"
                f"  broker {1e6 * broker_cpu / n:.2f} µs/record (producer included)",
                flush=True,
            )


if __name__ == "__main__":
    main()
