"""Sends completion events to chat.completions (finals to chat.answers too), in emit order.

One sender task drains one queue, so a request's chunks and its final event can never
overtake each other, whichever coroutine emitted them. Events go to the partition number
their prompt came from: the attempt ledger of a replica reads exactly the completions
partitions matching its assigned conversations partitions, whatever partitioner the
producer of the prompts used. The scheduler also emits each final event a second time
with `answers=True`: the same record goes to chat.answers, the durable answer, which
outlives the chunks of chat.completions.

Every event's delivery is checked: `on_delivered` runs exactly once per emit, with None
once Kafka acknowledged it, or with the error. What is
emitted and not yet acknowledged is bounded (count and bytes): `room()` waits until it
is under the bound, and the scheduler awaits it before each decode step, so a slow or
unreachable Kafka slows generation down instead of growing memory.

After a send fails, the producer is replaced (once what it has in flight resolved): an
idempotent aiokafka producer that lost a batch answers OutOfOrderSequenceNumber to every
later batch of that partition, so without a fresh producer id one refused record would
make that partition undeliverable for the life of the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer

from inference.metrics import WorkerMetrics
from schemas.codec import encode
from schemas.events import Event

log = logging.getLogger(__name__)

OnDelivered = Callable[[BaseException | None], None]


class EventSink(Protocol):
    """Where the scheduler's events go: Kafka in production, a list in unit tests."""

    def emit(
        self, event: Event, partition: int, on_delivered: OnDelivered, *, answers: bool = False
    ) -> None:
        """Queue `event` for `partition` of chat.completions (of chat.answers if `answers`);
        `on_delivered` once it is durable or has failed."""
        ...

    async def room(self) -> None:
        """Return once there is room for more events (backpressure on generation)."""
        ...


@dataclass
class _Item:
    event: Event
    partition: int
    value: bytes
    headers: list[tuple[str, bytes]]
    size: int
    on_delivered: OnDelivered
    answers: bool


class Publisher:
    """`emit()` never blocks; `room()` is where producers of events wait. See the module."""

    def __init__(
        self,
        new_producer: Callable[[], AIOKafkaProducer],
        topic: str,
        answers: str,
        *,
        max_events: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._new_producer = new_producer
        self._producer = new_producer()
        self._poisoned = False  # a send failed: replace the producer before the next one
        self._topic = topic
        self._answers = answers
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._partitions: dict[str, int] = {}
        self.events = 0  # emitted, not yet acknowledged or failed
        self.bytes = 0
        self._room = asyncio.Event()
        self._room.set()

    async def start(self) -> None:
        await self._producer.start()
        for topic in (self._topic, self._answers):
            self._partitions[topic] = len(await self._producer.partitions_for(topic))
        self._task = asyncio.create_task(self._run(), name="publisher")

    def emit(
        self, event: Event, partition: int, on_delivered: OnDelivered, *, answers: bool = False
    ) -> None:
        try:
            value, raw_headers = encode(event)
        except Exception as exc:  # not encodable: fails like an undelivered event, later
            log.exception("could not encode %s", event.event_type)
            asyncio.get_running_loop().call_soon(on_delivered, exc)
            return
        headers = [(k, v if isinstance(v, bytes) else str(v).encode()) for k, v in raw_headers]
        size = len(value) + len(event.key) + sum(len(k) + len(v) for k, v in headers)
        self._account(1, size)
        self._queue.put_nowait(_Item(event, partition, value, headers, size, on_delivered, answers))

    async def room(self) -> None:
        if not self._room.is_set() and self._metrics is not None:
            self._metrics.publisher_waits.inc()
        await self._room.wait()

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
        while not self._queue.empty():  # never sent: their requests are not done
            item = self._queue.get_nowait()
            self._settle(item, asyncio.CancelledError("publisher stopped"))
        with contextlib.suppress(Exception):
            await self._producer.stop()

    def _account(self, events: int, size: int) -> None:
        self.events += events
        self.bytes += size
        if self.events < self._max_events and self.bytes < self._max_bytes:
            self._room.set()
        else:
            self._room.clear()
        if self._metrics is not None:
            self._metrics.publisher_events.set(self.events)
            self._metrics.publisher_bytes.set(self.bytes)

    def _settle(self, item: _Item, exc: BaseException | None) -> None:
        self._account(-1, -item.size)
        if exc is not None:
            log.error("%s of %s not delivered: %r", item.event.event_type, item.event.key, exc)
            if self._metrics is not None:
                self._metrics.undelivered.inc()
        item.on_delivered(exc)

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if self._poisoned:
                    await self._replace_producer()
                topic = self._answers if item.answers else self._topic
                fut = await self._producer.send(
                    topic,
                    value=item.value,
                    key=item.event.key.encode(),
                    headers=item.headers,
                    partition=item.partition % (self._partitions.get(topic) or item.partition + 1),
                )
                fut.add_done_callback(functools.partial(self._delivered, item))
            except Exception as exc:  # e.g. a record too large: report, keep sending others
                self._settle(item, exc)
            finally:
                self._queue.task_done()

    def _delivered(self, item: _Item, fut: asyncio.Future[object]) -> None:
        # the outcome is always retrieved: no "exception was never retrieved"
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is not None:
            self._poisoned = True
        self._settle(item, exc)

    async def _replace_producer(self) -> None:
        """Let the old producer's batches resolve (order is kept), then a fresh one."""
        old, self._poisoned = self._producer, False
        with contextlib.suppress(Exception):
            await old.flush()
        with contextlib.suppress(Exception):
            await old.stop()
        self._producer = self._new_producer()
        await self._producer.start()
        log.warning("publisher: producer replaced after an undelivered event")
