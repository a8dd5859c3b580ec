"""The deadline keeper (#14): the one writer of `queue_timeout` and `stalled` failures.

A prompt not started within `queue_timeout_s` of its acceptance, or a started attempt
with no event for `stall_timeout_s`, ends with a retryable CompletionFailed, written to
chat.completions (its stream ends with `error`) and chat.answers (the durable record).

Why here, and why exactly one writer: the deadline must fire precisely when no replica is
alive, so it cannot live in the replicas; the command API accepted the prompt and already
writes to Kafka. Each conversation belongs to one partition of both topics (both keyed
by conversation_id, same partition count), and the keepers of all command API processes
form ONE consumer group over both topics: the group gives each partition to exactly one
keeper, so each prompt has one judge. A rebalance (or a restart) hands a partition over;
the new owner rebuilds its view by reading both topics from `lookback` ago (no state, no
commits) and acts on a partition only once it has caught up with both, so it sees any
failure it or its predecessor already wrote and never writes a second. If a duplicate
does slip through a rebalance's overlap, it has the same event_id (derived from request,
attempt and code) and the same (request_id, attempt): every consumer is idempotent on it.

The replicas cooperate: a replica never starts a first attempt past its queue deadline
(`ReplicaWorker._expired`), and one that comes back later finds this final in its ledger.
The keeper waits `grace_s` past the deadline so a start the replica made just before it
has arrived. Only prompts of models some replica ever announced are judged ("accepted
while a replica was alive"); a system without beats (tests of the command API alone)
sees nothing written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from command_api.settings import CommandSettings
from infra.clients import aio_producer
from schemas.codec import decode_if, encode
from schemas.errors import EventDecodeError
from schemas.events import (
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    Event,
    PromptSubmitted,
    TokenChunk,
)

log = logging.getLogger(__name__)
GRACE_S = 2.0
FINAL_MEMORY = 200_000
# The events the book reads. The keeper sees every TokenChunk of the system: `decode_if`
# decodes those a third as dear as `decode` (~22 against ~66 µs here) and skips the rest
# unread; under load this consumer was a quarter of the command API's event-loop time.
BOOKED = frozenset(
    c.event_type
    for c in (PromptSubmitted, CompletionStarted, TokenChunk, CompletionFinished, CompletionFailed)
)


@dataclass
class _Pending:
    prompt: PromptSubmitted
    partition: int
    attempt: int = 0  # 0: not started
    last_activity: float = 0.0  # wall clock of the last event of `attempt`


class DeadlineBook:
    """Which prompts of the owned partitions are past a deadline (pure; clock injected)."""

    def __init__(
        self,
        queue_timeout_s: float,
        stall_timeout_s: float,
        *,
        grace_s: float = GRACE_S,
        judged: Callable[[str], bool] = lambda model: True,
    ) -> None:
        self.queue_timeout_s, self.stall_timeout_s = queue_timeout_s, stall_timeout_s
        self.grace_s = grace_s
        self._judged = judged
        self.pending: dict[str, _Pending] = {}
        # started attempts met before their prompt (the two topics are read side by side)
        self.activity: dict[str, tuple[int, float]] = {}
        self.final: dict[str, None] = {}  # insertion-ordered, trimmed to FINAL_MEMORY

    def apply(self, event: Event, partition: int) -> None:
        if isinstance(event, PromptSubmitted):
            if event.request_id not in self.final and event.request_id not in self.pending:
                attempt, last = self.activity.pop(event.request_id, (0, 0.0))
                self.pending[event.request_id] = _Pending(event, partition, attempt, last)
            return
        if not isinstance(
            event, CompletionStarted | TokenChunk | CompletionFinished | CompletionFailed
        ):
            return
        rid = event.request_id
        if isinstance(event, CompletionFinished | CompletionFailed):
            self.final[rid] = None
            while len(self.final) > FINAL_MEMORY:
                del self.final[next(iter(self.final))]
            self.pending.pop(rid, None)
            self.activity.pop(rid, None)
            return
        at = event.occurred_at.timestamp()
        p = self.pending.get(rid)
        if p is None:
            if rid not in self.final:
                attempt, last = self.activity.get(rid, (0, 0.0))
                self.activity[rid] = (max(attempt, event.attempt), max(last, at))
        elif event.attempt >= p.attempt:
            p.attempt = event.attempt
            p.last_activity = max(p.last_activity, at)

    def drop_partitions(self, partitions: set[int]) -> None:
        for rid in [r for r, p in self.pending.items() if p.partition in partitions]:
            del self.pending[rid]
        self.activity.clear()  # cheap to rebuild: the new owner of a partition re-reads it

    def due(self, now: float, ready: Callable[[int], bool]) -> list[CompletionFailed]:
        """The failures to write now, for partitions whose view has caught up."""
        out: list[CompletionFailed] = []
        for rid, p in list(self.pending.items()):
            if not ready(p.partition) or not self._judged(p.prompt.model):
                continue
            if p.attempt == 0:
                limit, since, code = (
                    self.queue_timeout_s,
                    p.prompt.occurred_at.timestamp(),
                    "queue_timeout",
                )
                message = f"Not started within {limit:g} s: no replica took it; retry."
            else:
                limit, since, code = self.stall_timeout_s, p.last_activity, "stalled"
                message = f"Attempt {p.attempt} made no progress for {limit:g} s; retry."
            if limit <= 0 or now - since <= limit + self.grace_s:
                continue
            attempt = max(1, p.attempt)
            out.append(
                CompletionFailed(
                    event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"chatlog:{rid}:{attempt}:{code}")),
                    request_id=rid,
                    conversation_id=p.prompt.conversation_id,
                    attempt=attempt,
                    error_code=code,
                    message=message,
                    retryable=True,
                    traceparent=p.prompt.traceparent,
                )
            )
        return out


class DeadlineKeeper:
    """A DeadlineBook fed by this process's share (group) of chat.conversations and
    chat.completions; writes what falls due. `start()` / `stop()`."""

    def __init__(self, settings: CommandSettings, judged: Callable[[str], bool]) -> None:
        self._s = settings
        self.book = DeadlineBook(settings.queue_timeout_s, settings.stall_timeout_s, judged=judged)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._behind: dict[TopicPartition, int] = {}  # partition -> end offset to reach
        self.written = 0

    @property
    def enabled(self) -> bool:
        return self._s.queue_timeout_s > 0 or self._s.stall_timeout_s > 0

    async def start(self) -> None:
        """Returns at once; the keeper connects in the background, retrying while Kafka is
        away (the command API may serve without it: `require_kafka_at_startup`)."""
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="deadline-keeper")

    async def _connect(self) -> None:
        t = self._s.topics
        while True:
            self._producer = aio_producer(self._s)
            self._consumer = AIOKafkaConsumer(
                **self._s.aiokafka_options(),
                group_id=f"{self._s.topic_prefix}chatlog-deadline-keeper",
                enable_auto_commit=False,
                auto_offset_reset="latest",
            )
            self._consumer.subscribe([t.conversations, t.completions], listener=_Rebalance(self))
            try:
                await self._producer.start()
                await self._consumer.start()
                return
            except Exception as exc:
                log.warning("deadline keeper: Kafka unreachable, retrying: %r", exc)
                await self._close()
                await asyncio.sleep(2.0)

    async def _close(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()

    def _lookback_s(self) -> float:
        return 2 * max(self._s.queue_timeout_s, self._s.stall_timeout_s) + 600

    async def assigned(self, tps: set[TopicPartition]) -> None:
        assert self._consumer is not None
        since = int((time.time() - self._lookback_s()) * 1000)
        starts = await self._consumer.offsets_for_times(dict.fromkeys(tps, since))
        ends = await self._consumer.end_offsets(list(tps))
        for tp in tps:
            found = starts.get(tp)
            start = found.offset if found is not None else ends[tp]
            self._consumer.seek(tp, start)
            if start < ends[tp]:
                self._behind[tp] = ends[tp]

    def revoked(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._behind.pop(tp, None)
        self.book.drop_partitions({tp.partition for tp in tps})

    def _ready(self, partition: int) -> bool:
        t = self._s.topics
        return all(
            TopicPartition(topic, partition) not in self._behind
            for topic in (t.conversations, t.completions)
        )

    async def _run(self) -> None:
        await self._connect()
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=250, max_records=2000)
                for tp, records in batch.items():
                    for rec in records:
                        try:
                            event = decode_if(rec.value, rec.headers, BOOKED)
                        except EventDecodeError:
                            continue
                        if event is not None:
                            self.book.apply(event, tp.partition)
                    if records and records[-1].offset + 1 >= self._behind.get(tp, 0):
                        self._behind.pop(tp, None)
                for failed in self.book.due(time.time(), self._ready):
                    await self._write(failed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker away: try again; deadlines only get later
                log.warning("deadline keeper: %r", exc)
                await asyncio.sleep(1.0)

    async def _write(self, failed: CompletionFailed) -> None:
        assert self._producer is not None
        value, headers = encode(failed)
        key = failed.key.encode()
        t = self._s.topics
        await self._producer.send_and_wait(t.completions, value, key=key, headers=headers)
        await self._producer.send_and_wait(t.answers, value, key=key, headers=headers)
        self.book.apply(failed, -1)
        self.written += 1
        log.info("%s ended: %s", failed.request_id, failed.error_code)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, keeper: DeadlineKeeper) -> None:
        self._keeper = keeper

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._keeper.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._keeper.assigned(assigned)
