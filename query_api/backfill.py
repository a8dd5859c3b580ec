"""Re-reading one partition of chat.completions for a request the hub joined mid-way.

When the hub started after a generation began, its buffer lacks the early chunks, and the
projection may not have written them yet either. Rather than trust the projection's pace,
we read that request's partition from shortly before it began (`offsets_for_times`) up to
the first offset the hub saw of it: everything after that offset is in the hub already.
A short-lived consumer without a group; rare (only generations that straddle a start),
and bounded: at most `backfill_concurrency` at once per process (`BackfillLimiter`), the
others wait their turn, so a burst of gaps cannot open a consumer each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition

from query_api.events import StreamEvent
from query_api.settings import QuerySettings
from schemas import codec
from schemas.errors import EventDecodeError
from schemas.events import TokenChunk


class BackfillLimiter:
    """At most `limit` backfills at once; `running` and `waiting` are exported as metrics."""

    def __init__(self, limit: int) -> None:
        self._sem = asyncio.Semaphore(max(1, limit))
        self.running = 0
        self.waiting = 0
        self.total = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        self.total += 1
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()


async def chunks_before(
    settings: QuerySettings,
    *,
    request_id: str,
    attempt: int,
    partition: int,
    since_s: float,
    end_offset: int,
    timeout_s: float = 30.0,
) -> list[StreamEvent]:
    """The chunks of (request, attempt) in [offset at time `since_s`, end_offset)."""
    tp = TopicPartition(settings.topics.completions, partition)
    consumer = AIOKafkaConsumer(
        **settings.aiokafka_options(), group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    found: dict[int, StreamEvent] = {}
    try:
        consumer.assign([tp])
        times = await consumer.offsets_for_times({tp: int(since_s * 1000)})
        begin = (await consumer.beginning_offsets([tp]))[tp]
        start = times[tp].offset if times.get(tp) is not None else end_offset
        consumer.seek(tp, max(begin, min(start, end_offset)))
        deadline = time.monotonic() + timeout_s
        position = await consumer.position(tp)
        while position < end_offset:
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill of {request_id} did not reach offset {end_offset}")
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=5000)
            for record in batch.get(tp, []):
                position = record.offset + 1
                if record.offset >= end_offset:
                    break
                try:
                    event = codec.decode(record.value, record.headers)
                except EventDecodeError:
                    continue
                if (
                    isinstance(event, TokenChunk)
                    and event.request_id == request_id
                    and event.attempt == attempt
                ):
                    found[event.seq] = StreamEvent(
                        "chunk",
                        request_id,
                        attempt,
                        event.seq,
                        event.text,
                        event.token_count,
                        occurred_at=event.occurred_at.timestamp(),
                    )
    finally:
        await consumer.stop()
    return [found[s] for s in sorted(found)]
