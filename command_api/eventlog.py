"""Appending events to `chat.conversations`, with a bounded wait and a clean failure.

The guarantee behind a 503: `append` waits at most `kafka_send_timeout_s` for the broker's
ack. If it does not come, the producer that holds the record is *discarded* before
`append` raises: its sender task is cancelled (an idempotent aiokafka producer otherwise
retries a batch forever, so a record we reported as failed could land minutes later), so
queued and retrying batches die with it, and a fresh producer serves later calls.
Discarding waits for produce requests already on the wire (bounded by the request
timeout); if the broker acked the record meanwhile, `append` reports success after all.
What no client can rule out: a broker that wrote the record but whose answer never came
back (lost or slower than the request timeout). In that case the record exists under a
request id the client never received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from command_api.errors import EventLogUnavailable
from command_api.settings import CommandSettings
from infra.clients import aio_producer
from schemas import Event, encode

log = logging.getLogger(__name__)


class EventLog(Protocol):
    """Where the command API appends events. `append` returns only once durably acked."""

    async def append(self, event: Event) -> None: ...

    @property
    def ready(self) -> bool: ...


class KafkaEventLog:
    """`EventLog` on an idempotent acks=all aiokafka producer (infra.clients.aio_producer)."""

    def __init__(self, settings: CommandSettings) -> None:
        self._settings = settings
        self._topic = settings.topics.conversations
        self._timeout_s = settings.kafka_send_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._reconnector: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def ready(self) -> bool:
        return self._producer is not None

    def _new_producer(self) -> AIOKafkaProducer:
        request_ms = max(1000, int(self._timeout_s * 1000))
        tuning: dict[str, int] = {}
        if self._settings.kafka_linger_ms is not None:
            tuning["linger_ms"] = self._settings.kafka_linger_ms
        return aio_producer(
            self._settings,
            request_timeout_ms=request_ms,  # also the TTL of a batch that has no leader
            metadata_max_age_ms=60_000,
            retry_backoff_ms=50,
            **tuning,
        )

    async def start(self, wait_s: float, *, required: bool) -> None:
        """Connect, retrying for up to `wait_s`; then fail, or keep retrying in the background."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            if await self._try_connect():
                return
            if asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.5)
        if required:
            raise RuntimeError(f"Kafka at {self._settings.kafka_bootstrap} is unreachable")
        log.warning("Kafka unreachable; serving with 503s and reconnecting in the background")
        self._ensure_reconnector()

    async def _try_connect(self) -> bool:
        producer = self._new_producer()
        try:
            async with asyncio.timeout(self._timeout_s + 2):
                await producer.start()
                await producer.partitions_for(self._topic)
        except (KafkaError, TimeoutError, OSError) as exc:
            log.info("Kafka not reachable yet: %r", exc)
            await _abort(producer)
            return False
        self._producer = producer
        return True

    def _ensure_reconnector(self) -> None:
        if self._closed or (self._reconnector and not self._reconnector.done()):
            return
        self._reconnector = asyncio.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        while not self._closed and self._producer is None:
            if await self._try_connect():
                return
            await asyncio.sleep(1.0)

    async def append(self, event: Event) -> None:
        """Append and wait for the ack; raises EventLogUnavailable (nothing was appended)."""
        producer = self._producer
        if producer is None:
            raise EventLogUnavailable("The event log (Kafka) is unavailable; retry later.")
        value, headers = encode(event)
        record: asyncio.Future[Any] | None = None
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                # Cancelling `send` itself (before it returns) drops the record, per aiokafka.
                # The record's time is the event's: a retry's re-append of a crashed
                # request's event (prompts.py) sits in the time index where it happened.
                record = await producer.send(
                    self._topic,
                    value=value,
                    key=event.key.encode(),
                    headers=headers,
                    timestamp_ms=int(event.occurred_at.timestamp() * 1000),
                )
                # Shielded: a cancelled record future is still sent; waiting on it without
                # cancelling it lets `_discard` tell a late ack from a failure. (One timer
                # for both steps: cheaper than asyncio.wait's own, per prompt.)
                await asyncio.shield(record)
                return
        except (KafkaError, TimeoutError) as exc:
            log.warning("append of %s failed: %r", event.event_type, exc)
        except Exception as exc:
            if record is None:  # not Kafka refusing `send`: a bug, surfaced as before
                raise
            log.warning("append of %s failed: %r", event.event_type, exc)  # the record failed
        await self._discard(producer)
        acked_late = (
            record is not None
            and record.done()
            and not record.cancelled()
            and record.exception() is None
        )
        if acked_late:
            return  # acked while in flight: it is in the log after all
        raise EventLogUnavailable("The event log (Kafka) did not acknowledge in time.")

    async def _discard(self, producer: AIOKafkaProducer) -> None:
        async with self._lock:
            if self._producer is producer:
                self._producer = None
                await _abort(producer)
                self._ensure_reconnector()

    async def ping(self) -> bool:
        """Whether the broker answers a metadata request now (for /readyz)."""
        producer = self._producer
        if producer is None:
            return False
        try:
            async with asyncio.timeout(2):
                await producer.client.fetch_all_metadata()
        except (KafkaError, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        self._closed = True
        if self._reconnector:
            self._reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnector
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                async with asyncio.timeout(self._timeout_s):
                    await producer.stop()  # flushes what is pending: graceful shutdown
            except TimeoutError:
                await _abort(producer)


async def _abort(producer: AIOKafkaProducer) -> None:
    """Stop a producer WITHOUT flushing: pending and retrying batches are dropped.

    aiokafka has no public abort; cancelling the sender task is what its own `stop()` does
    after flushing. The task first awaits produce requests already sent (each bounded by
    request_timeout_ms), then no batch is ever sent again.
    """
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
            async with asyncio.timeout(producer._request_timeout_ms / 1000 + 1):
                await task
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await producer.stop()
