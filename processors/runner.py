"""The batch loop every projection runs: fetch, decode, apply in one transaction, repeat.

Why a plain aiokafka consumer and not a faust agent: a projection's position lives in
Postgres, written in the same transaction as its rows. That needs (1) a seek to the stored
checkpoint on every partition assignment, (2) batches whose acknowledgement is that one
commit, and (3) no offset commits of its own. faust offers none of these as a supported
feature (its tracker: external offset storage unanswered, #461; seek during rebalance
crashes, #54; acks/commit gaps with take(), #312 and the still-open manual-ack take, #192;
offsets committed past in-flight messages, #606). So the faust app is the worker shell and
this loop runs inside it as an app task (see `processors.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from infra.clients import aio_producer
from infra.dlq import dlq_headers
from processors import metrics
from processors.checkpoints import Fenced
from processors.errors import is_transient
from processors.projection import Progress, Projection, projection_topics
from processors.settings import ProcessorSettings
from schemas.codec import EVENT_TYPE_HEADER, decode
from schemas.errors import EventDecodeError
from schemas.events import Event

log = logging.getLogger(__name__)
CLIENT_STOP_TIMEOUT_S = 5.0
TP = tuple[str, int]
Item = tuple[ConsumerRecord[bytes, bytes], Event | None]  # None: dead-lettered already


CHECKPOINT_POLL_S = 1.0  # how often an idle live runner compares stored checkpoints


class Runner:
    """Runs one projection over chat.conversations, chat.completions and chat.answers.

    With `group` it joins that consumer group (live); without, it assigns every partition
    itself (a rebuild) and, with `stop_at_lag`, returns once that close to the log end, or,
    with `on_near_end`, then asks it for target positions and returns once past those.
    """

    def __init__(
        self,
        settings: ProcessorSettings,
        projection: Projection,
        *,
        group: str | None,
        stop_at_lag: int | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_near_end: Callable[[], Awaitable[dict[TP, int]]] | None = None,
        max_events: int | None = None,
        wait_ms: int | None = None,
    ) -> None:
        self.settings = settings
        self.projection = projection
        self.group = group
        self.stop_at_lag = stop_at_lag
        self.on_progress = on_progress
        self.on_near_end = on_near_end
        self.max_events = max_events or projection.batch_max_events
        self.wait_ms = projection.batch_wait_ms if wait_ms is None else wait_ms
        self.targets: dict[TP, int] | None = None
        # A projection may name fewer logs (the usage meter reads no token chunks).
        self.topics: list[str] = getattr(projection, "topics", None) or projection_topics(settings)
        self.base: dict[TP, int | None] = {}
        # Where a partition without a checkpoint starts: its first retained offset, > 0 once
        # chat.completions' chunks expired. Only for positions (lag, targets), not fences.
        self.floor: dict[TP, int] = {}
        self.folded = 0
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: Any = None
        self._rate_mark = (time.monotonic(), 0)
        # A rebalance's seek and a batch never interleave (both await Postgres).
        self._exclusive = asyncio.Lock()
        self._generation = 0  # bumped by every seek: batches fetched before it are stale
        self._checked_at = 0.0  # when an idle live runner last compared stored checkpoints

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        consumer = self._consumer = AIOKafkaConsumer(
            **self.settings.aiokafka_options(),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=3_600_000,  # a paused (retrying) batch must keep its partitions
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self._producer = aio_producer(self.settings)
        await consumer.start()
        await self._producer.start()
        try:
            if self.group:
                consumer.subscribe(self.topics, listener=_SeekToCheckpoint(self))
            else:
                cluster = await consumer._client.fetch_all_metadata()
                tps = [
                    TopicPartition(t, p)
                    for t in self.topics
                    for p in sorted(cluster.partitions_for_topic(t) or ())
                ]
                consumer.assign(tps)
                await self.seek(tps)
            await self._loop(consumer)
        finally:
            # aiokafka's stop() can wait forever: with the topics deleted, its metadata
            # refresh spins and the stop waits on it, and SIGTERM never ended the process.
            # A stop must end: each client gets a bounded time, then is left to the loop's
            # shutdown (which cancels what is left of it).
            for client in (consumer, self._producer):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLIENT_STOP_TIMEOUT_S):
                        await client.stop()

    async def _loop(self, consumer: AIOKafkaConsumer) -> None:
        # Two stages overlap: while batch N is in Postgres (awaiting I/O), batch N+1 is
        # fetched and decoded. Batches still apply strictly one after another.
        inflight: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                generation = self._generation
                records = await self._fetch(consumer)
                items = await self._decode_all(records)
                if inflight is not None:
                    await inflight
                    inflight = None
                if items and generation == self._generation:
                    inflight = asyncio.create_task(self._process(items))
                elif items:  # a seek ran while they were fetched: read again from checkpoints
                    await self.seek(list(consumer.assignment()))
                elif self.group:
                    await self._follow_moved_checkpoints(consumer)
                # With a batch in flight `base` trails by it: lag reads high, never low.
                lag = await self._observe(consumer, idle=not items)
                if await self._reached_the_end(lag):
                    return
        finally:
            if inflight is not None:
                await inflight

    async def _follow_moved_checkpoints(self, consumer: AIOKafkaConsumer) -> None:
        """Idle: if the stored checkpoints moved (`replay --from-timestamp`, a rebuild's
        switch), seek to them now rather than when the next record arrives (a quiet system
        may send none for hours). One small SELECT per `CHECKPOINT_POLL_S` while idle."""
        now = time.monotonic()
        if now - self._checked_at < CHECKPOINT_POLL_S:
            return
        self._checked_at = now
        async with self._exclusive:
            stored = await self._retry_transient(self.projection.stored_positions)
            assigned = list(consumer.assignment())
            moved = [
                tp
                for tp in assigned
                if (key := (tp.topic, tp.partition)) in stored and stored[key] != self.base.get(key)
            ]
            if moved:
                log.info("%s: stored checkpoints moved on %d partitions: seeking there",
                         self.projection.name, len(moved))  # fmt: skip
                await self._seek(assigned)

    async def _reached_the_end(self, lag: int | None) -> bool:
        if self.targets is not None:
            return all(self.position(tp) >= o for tp, o in self.targets.items())
        if self.stop_at_lag is not None and lag is not None and lag <= self.stop_at_lag:
            if self.on_near_end is None:
                return True
            # The caller locks the live projection and names the positions to reach.
            self.targets = await self.on_near_end()
        return False

    async def _decode_all(self, records: list[ConsumerRecord[bytes, bytes]]) -> list[Item]:
        items: list[Item] = []
        for i, record in enumerate(records):
            if i % 256 == 255:
                await asyncio.sleep(0)  # let the batch in flight read its Postgres replies
            items.append((record, await self._decode(record)))
        return items

    async def _fetch(self, consumer: AIOKafkaConsumer) -> list[ConsumerRecord[bytes, bytes]]:
        """Up to `max_events` records, waiting at most `wait_ms` to fill the batch."""
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + self.wait_ms / 1000
        while len(records) < self.max_events:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            fetched = await consumer.getmany(
                timeout_ms=max(remaining_ms, 0), max_records=self.max_events - len(records)
            )
            assigned = consumer.assignment()
            records += [r for tp, rs in fetched.items() if tp in assigned for r in rs]
            if not fetched or remaining_ms <= 0:
                break
        return records

    async def seek(self, tps: list[TopicPartition]) -> None:
        """Position these partitions at the stored checkpoints (the beginning when none)."""
        assert self._consumer is not None
        async with self._exclusive:
            await self._seek(tps)

    async def _seek(self, tps: list[TopicPartition]) -> None:
        assert self._consumer is not None
        self._generation += 1
        stored = await self._retry_transient(self.projection.stored_positions)
        fresh = [tp for tp in tps if (tp.topic, tp.partition) not in stored]
        starts = await self._consumer.beginning_offsets(fresh) if fresh else {}
        for tp in tps:
            # The awaits above let a rebalance run: a partition revoked meanwhile is the new
            # owner's to position (seeking it raised IllegalStateError and crashed the
            # instance when two processors shared the partitions: issue #17's fault test).
            if tp not in self._consumer.assignment():
                continue
            offset = stored.get((tp.topic, tp.partition))
            self.base[(tp.topic, tp.partition)] = offset
            if offset is None:
                self.floor[(tp.topic, tp.partition)] = starts.get(tp, 0)
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, offset)

    def position(self, tp: TP) -> int:
        """The next offset to fold on `tp` (its first retained one before any is folded)."""
        base = self.base.get(tp)
        return self.floor.get(tp, 0) if base is None else base

    async def _process(self, items: list[Item]) -> None:
        async with self._exclusive:
            try:
                await self._apply_batch(items)
            except Fenced as exc:  # not ours any more (a switch, a rebalance): re-seek
                log.warning("%s", exc)
                await self._seek(list(self._consumer.assignment()) if self._consumer else [])

    async def _apply_batch(self, items: list[Item]) -> None:
        # Records below the position already folded (fetched before a seek) are skipped.
        items = [
            (r, e) for r, e in items if (self.base.get((r.topic, r.partition)) or 0) <= r.offset
        ]
        if not items:
            return
        positions: dict[TP, int] = {}
        for r, _ in items:
            positions[(r.topic, r.partition)] = r.offset + 1
        expected = {tp: self.base.get(tp) for tp in positions}
        events = [e for _, e in items if e is not None]
        failures = 0
        while True:
            try:
                await self.projection.apply(events, positions, expected)
                break
            except Fenced:
                raise
            except Exception as exc:
                if is_transient(exc):
                    await self._pause(exc)
                    continue
                failures += 1
                log.warning("%s: batch failed (%d): %r", self.projection.name, failures, exc)
                if failures >= self.settings.apply_retries:
                    await self._one_by_one(items)
                    return
        self.base.update(positions)
        self._count(len(items))

    async def _one_by_one(self, items: list[Item]) -> None:
        """Isolate the poison in a failing batch: apply each event alone, DLQ what fails."""
        for record, event in items:
            tp = (record.topic, record.partition)
            position = {tp: record.offset + 1}
            if event is not None and not await self._apply_alone(record, event):
                event = None
            if event is None:  # dead-lettered: only move the checkpoint past it
                await self._retry_transient(
                    self.projection.apply, [], position, {tp: self.base.get(tp)}
                )
            self.base[tp] = record.offset + 1
            self._count(1)

    async def _apply_alone(self, record: ConsumerRecord[bytes, bytes], event: Event) -> bool:
        tp = (record.topic, record.partition)
        position = {tp: record.offset + 1}
        for attempt in range(1, self.settings.apply_retries + 1):
            try:
                await self._retry_transient(
                    self.projection.apply, [event], position, {tp: self.base.get(tp)}
                )
                return True
            except Fenced:
                raise
            except Exception as exc:
                if attempt == self.settings.apply_retries:
                    await self._dead_letter(record, exc)
        return False

    async def _decode(self, record: ConsumerRecord[bytes, bytes]) -> Event | None:
        wanted = self.projection.event_types
        if wanted is not None:
            kind = next((v for k, v in record.headers if k == EVENT_TYPE_HEADER), None)
            if kind is not None and kind.decode(errors="replace") not in wanted:
                return None  # not this projection's business (not decoded, not poison)
        try:
            return decode(
                record.value,
                list(record.headers),
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
        except EventDecodeError as exc:
            await self._dead_letter(record, exc)
            return None

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], exc: BaseException) -> None:
        log.error("%s: dead-lettering %s/%d@%d: %s", self.projection.name, record.topic,
                  record.partition, record.offset, exc)  # fmt: skip
        headers = dlq_headers(
            list(record.headers),
            error=exc,
            consumer=f"processors.{self.projection.name}",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        await self._retry_transient(
            self._producer.send_and_wait,
            self.settings.topics.dlq,
            value=record.value,
            key=record.key,
            headers=headers,
        )
        metrics.DEAD_LETTERED.labels(self.projection.name).inc()

    async def _retry_transient(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        while True:
            try:
                return await fn(*args, **kw)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                await self._pause(exc)

    async def _pause(self, exc: BaseException) -> None:
        """A dependency is down: not poison. Wait, keep the batch, try again."""
        metrics.TRANSIENT_FAILURES.labels(self.projection.name).inc()
        log.warning("%s: transient failure, retrying in 1s: %r", self.projection.name, exc)
        with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
            async with asyncio.timeout(1.0):
                await self._stopping.wait()
        if self._stopping.is_set():
            raise asyncio.CancelledError

    def _count(self, n: int) -> None:
        self.folded += n
        metrics.EVENTS.labels(self.projection.name).inc(n)

    async def _observe(self, consumer: AIOKafkaConsumer, *, idle: bool) -> int | None:
        """Update lag gauges and the rate; report progress about once a second."""
        now = time.monotonic()
        since, count = self._rate_mark
        if now - since < 1.0 and not (idle and self.stop_at_lag is not None):
            return None
        rate = (self.folded - count) / max(now - since, 1e-6)
        self._rate_mark = (now, self.folded)
        metrics.EVENTS_PER_SECOND.labels(self.projection.name).set(rate)
        assigned = list(consumer.assignment())
        ends = await consumer.end_offsets(assigned) if assigned else {}
        lag = 0
        for tp in assigned:
            position = self.position((tp.topic, tp.partition))
            behind = max(ends.get(tp, 0) - position, 0)
            lag += behind
            metrics.LAG.labels(self.projection.name, tp.topic, str(tp.partition)).set(behind)
        if self.on_progress:
            self.on_progress(Progress(self.folded, rate, lag))
        return lag


class _SeekToCheckpoint(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, position each partition at the projection's stored checkpoint."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Nothing to flush: a batch is one transaction, and the fence stops a late writer.
        for tp in revoked:
            self.runner.base.pop((tp.topic, tp.partition), None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.runner.seek(list(assigned))
