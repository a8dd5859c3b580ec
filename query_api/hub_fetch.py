"""The hub's Kafka side: one group-less consumer at the live end, fetched off the loop.

A confluent-kafka consumer rather than aiokafka's: aiokafka parses every fetch response
in Python on the event loop (~3 µs per record in the small batches of a live stream, a
quarter of the hub's time), librdkafka does it in C off the loop. librdkafka fetches and
parses in its own threads; one thread of ours only waits for records and hands them over,
so the event loop never blocks on Kafka.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from query_api.settings import QuerySettings


def live_ends(
    consumer: Consumer, topics: tuple[str, ...], wanted: Callable[[str, int], bool]
) -> list[TopicPartition]:
    """The `wanted` partitions of `topics` at their current end offsets (blocking: run in
    a thread)."""
    meta = consumer.list_topics(timeout=10)
    missing = [t for t in topics if not (t in meta.topics and meta.topics[t].partitions)]
    if missing:
        raise RuntimeError(f"topics {missing} do not exist")
    return [
        live_end(consumer, t, p)
        for t in topics
        for p in sorted(meta.topics[t].partitions)
        if wanted(t, p)
    ]


def live_end(consumer: Consumer, topic: str, partition: int) -> TopicPartition:
    _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    return TopicPartition(topic, partition, high)


def add_live_end(consumer: Consumer, topic: str, partition: int) -> int:
    """Start reading one more partition at its end offset (blocking); that offset. One
    call per partition: `Hub.adopt` shares a pending one between streams."""
    end = live_end(consumer, topic, partition)
    consumer.incremental_assign([end])
    return int(end.offset)


def fetch_batch(consumer: Consumer, max_records: int, wait_s: float) -> list[Message]:
    """The next records: waits up to `wait_s` for the first, then takes what is queued.

    (`consume(n, timeout)` alone would wait the whole timeout for `n` records.)
    """
    first = consumer.poll(wait_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_records - 1, 0)]


class LiveReader:
    """The `wanted` partitions of the given topics, read from their end when `open` ran;
    `add` reads one more from its end when it runs."""

    def __init__(
        self,
        settings: QuerySettings,
        topics: tuple[str, ...],
        wanted: Callable[[str, int], bool] = lambda topic, partition: True,
    ) -> None:
        self._settings, self._topics, self._wanted = settings, topics, wanted
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="query-hub-fetch")
        self._consumer: Consumer | None = None
        self.positions: dict[tuple[str, int], int] = {}

    async def open(self) -> None:
        """Assign every partition at its end (the live end)."""
        s = self._settings
        consumer = Consumer(
            {
                **s.confluent_kafka_config(),
                # required by the client; never joined (assign, no subscribe) nor committed
                "group.id": f"query-hub-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "latest",
                # Let the broker gather a batch for up to `hub_fetch_wait_ms` (or until
                # `hub_fetch_min_bytes`): a trickle of one-record fetches costs more CPU
                # (here and in the broker) than the records in them.
                "fetch.wait.max.ms": s.hub_fetch_wait_ms,
                "fetch.min.bytes": s.hub_fetch_min_bytes,
            }
        )
        loop = asyncio.get_running_loop()
        try:
            ends = await loop.run_in_executor(
                self._thread, live_ends, consumer, self._topics, self._wanted
            )
            consumer.incremental_assign(ends)  # as `add` does: the two never mix kinds
        except BaseException:
            await loop.run_in_executor(self._thread, consumer.close)
            raise
        self.positions = {(tp.topic, tp.partition): tp.offset for tp in ends}
        self._consumer = consumer

    async def add(self, topic: str, partition: int) -> None:
        """Read `partition` of `topic` too, from its end offset now (after the fetch
        thread's current poll: the consumer is only ever used from that thread)."""
        consumer = self._consumer
        assert consumer is not None, "open() first"
        if (topic, partition) in self.positions:
            return
        offset = await asyncio.get_running_loop().run_in_executor(
            self._thread, add_live_end, consumer, topic, partition
        )
        self.positions.setdefault((topic, partition), offset)

    def partitions(self, topic: str) -> int:
        """How many partitions of `topic` are read."""
        return sum(1 for t, _ in self.positions if t == topic)

    async def fetch(self, max_records: int = 2000, wait_s: float = 0.2) -> list[Message]:
        consumer = self._consumer
        assert consumer is not None, "open() first"
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, fetch_batch, consumer, max_records, wait_s
        )

    async def close(self) -> None:
        if self._consumer is not None:
            # after the fetch thread's last poll (same thread): never close mid-poll
            await asyncio.get_running_loop().run_in_executor(self._thread, self._consumer.close)
        self._consumer = None

    def lag(self) -> int:
        """Records behind the partitions' high-water marks (from the last fetch responses)."""
        consumer = self._consumer
        if consumer is None:
            return 0
        lag = 0
        for (topic, partition), position in self.positions.items():
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high >= 0:
                lag += max(0, high - position)
        return lag
