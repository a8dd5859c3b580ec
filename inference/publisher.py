"""Sends completion events to chat.completions in the order they were emitted.

One sender task drains one queue, so a request's chunks and its final event can never
overtake each other, whichever coroutine emitted them. Events go to the partition number
their prompt came from: the attempt ledger of a replica reads exactly the completions
partitions matching its assigned conversations partitions, whatever partitioner the
producer of the prompts used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from aiokafka import AIOKafkaProducer

from schemas.codec import encode
from schemas.events import Event

log = logging.getLogger(__name__)

OnDelivered = Callable[[BaseException | None], None]


class EventSink(Protocol):
    """Where the scheduler's events go: Kafka in production, a list in unit tests."""

    def emit(self, event: Event, partition: int, on_delivered: OnDelivered | None = None) -> None:
        """Queue `event` for `partition`; call `on_delivered` once it is durable."""
        ...


class Publisher:
    """`emit()` never blocks; `on_delivered` runs once Kafka acknowledged the event."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._queue: asyncio.Queue[tuple[Event, int, OnDelivered | None]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._partitions: int | None = None

    async def start(self) -> None:
        parts = await self._producer.partitions_for(self._topic)
        self._partitions = len(parts)
        self._task = asyncio.create_task(self._run(), name="publisher")

    def emit(self, event: Event, partition: int, on_delivered: OnDelivered | None = None) -> None:
        self._queue.put_nowait((event, partition, on_delivered))

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def drain(self) -> None:
        """Wait until everything emitted so far was handed to the producer and flushed."""
        await self._queue.join()
        await self._producer.flush()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            event, partition, on_delivered = await self._queue.get()
            try:
                value, headers = encode(event)
                fut = await self._producer.send(
                    self._topic,
                    value=value,
                    key=event.key.encode(),
                    headers=[
                        (k, v if isinstance(v, bytes) else str(v).encode()) for k, v in headers
                    ],
                    partition=partition % (self._partitions or partition + 1),
                )
                if on_delivered is not None:
                    fut.add_done_callback(lambda f, cb=on_delivered: cb(_outcome(f)))
            except Exception as exc:  # e.g. a record too large: report, keep sending others
                log.exception("could not send %s", event.event_type)
                if on_delivered is not None:
                    on_delivered(exc)
            finally:
                self._queue.task_done()


def _outcome(fut: asyncio.Future[object]) -> BaseException | None:
    return asyncio.CancelledError() if fut.cancelled() else fut.exception()
