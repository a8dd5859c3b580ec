"""The hub: ONE Kafka consumer per process over chat.completions, fanned out in memory.

It reads the live end of `chat.completions` (no consumer group: every process sees every
partition) and keeps, per request, the chunks of the highest attempt it has seen, so a
subscriber can catch up from memory while a generation is live. It also tails
`chat.conversations` for PromptSubmitted, learning request -> owner before the projection
has written `chatlog.completions` (a stream is usually opened milliseconds after the POST).

Subscribing is synchronous: registration and the buffer snapshot happen without an await in
between, and the consumer loop folds and fans out each record synchronously too, so every
event is either in the snapshot or in the subscriber's queue, never both, never neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from query_api.events import StreamEvent
from query_api.settings import QuerySettings
from query_api.sse import chunk_frame
from schemas import codec
from schemas.errors import EventDecodeError
from schemas.events import (
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    PromptSubmitted,
    TokenChunk,
)

log = logging.getLogger(__name__)

# the event types the hub folds, per topic; others are skipped without decoding their body
COMPLETION_TYPES = frozenset(
    c.event_type for c in (CompletionStarted, TokenChunk, CompletionFinished, CompletionFailed)
)
OWNER_TYPES = frozenset({PromptSubmitted.event_type})


@dataclass(frozen=True, slots=True)
class Owner:
    user_id: str
    conversation_id: str
    model: str


class Subscriber:
    """One SSE client of one request: a bounded buffer the hub never waits on.

    Lighter than an `asyncio.Queue` (no getter/putter deques, no per-get future): the hub
    appends and resolves at most one waiting future; the stream takes everything pending
    in one go. `wake()` also lets a timer (heartbeats, polls) rouse a waiting stream.
    """

    __slots__ = ("_waiter", "maxsize", "overflowed", "pending", "request_id")

    def __init__(self, request_id: str, maxsize: int) -> None:
        self.request_id = request_id
        self.maxsize = maxsize
        self.pending: list[StreamEvent] = []
        self.overflowed = False
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event: StreamEvent) -> bool:
        """Queue an event for the stream; False (nothing queued) when the buffer is full."""
        if len(self.pending) >= self.maxsize:
            return False
        self.pending.append(event)
        self.wake()
        return True

    def take(self) -> list[StreamEvent]:
        """Everything pending, oldest first (empty when nothing is)."""
        batch, self.pending = self.pending, []
        return batch

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something is pending, the subscriber overflowed, or `wake()` was called."""
        if self.pending or self.overflowed:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


@dataclass
class RequestBuffer:
    """What the hub saw of one request: the highest attempt's chunks, and its end."""

    request_id: str
    partition: int
    first_offset: int  # the first offset the hub saw of this request: backfill stops there
    attempt: int = -1
    anchored: bool = False  # saw this attempt begin (CompletionStarted or chunk 0)
    first_seq: int | None = None
    model: str | None = None
    chunks: list[StreamEvent] = field(default_factory=list)
    terminal: StreamEvent | None = None
    touched: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Snapshot:
    partition: int
    first_offset: int
    anchored: bool
    events: tuple[StreamEvent, ...]


def partition_counts(settings: QuerySettings, topics: tuple[str, ...]) -> dict[str, int]:
    """Partitions per topic, from the broker (aiokafka's consumer only knows subscribed ones)."""
    meta = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10)
    counts = {t: len(meta.topics[t].partitions) for t in topics if t in meta.topics}
    missing = [t for t in topics if not counts.get(t)]
    if missing:
        raise RuntimeError(f"topics {missing} do not exist")
    return counts


class Hub:
    """Fans chat.completions out to subscribers by request id. Start with `await start()`."""

    def __init__(self, settings: QuerySettings) -> None:
        self._settings = settings
        self._buffers: dict[str, RequestBuffer] = {}
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._owners: OrderedDict[str, Owner] = OrderedDict()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._positions: dict[TopicPartition, int] = {}
        self.started_at = 0.0  # epoch seconds: where the hub joined the log
        self.start_offsets: dict[int, int] = {}
        self.overflows = 0
        self.decode_errors = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Assign every partition of both topics and seek to their ends (the live end)."""
        topics = self._settings.topics
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            # Let the broker gather a batch for up to `hub_fetch_wait_ms` (or until
            # `hub_fetch_min_bytes`) instead of answering every fetch with the one record
            # that just arrived: aiokafka parses each fetch response in Python, so a
            # trickle of tiny fetches cost more CPU than the records in them.
            fetch_min_bytes=self._settings.hub_fetch_min_bytes,
            fetch_max_wait_ms=self._settings.hub_fetch_wait_ms,
        )
        await consumer.start()
        try:
            wanted = (topics.completions, topics.conversations)
            counts = await asyncio.to_thread(partition_counts, self._settings, wanted)
            tps = [TopicPartition(t, p) for t in wanted for p in range(counts[t])]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                self._positions[tp] = await consumer.position(tp)
                if tp.topic == topics.completions:
                    self.start_offsets[tp.partition] = self._positions[tp]
        except BaseException:
            await consumer.stop()
            raise
        self.started_at = time.time()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="query-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        self._task = self._consumer = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        assert self._consumer is not None
        completions = self._settings.topics.completions
        last_sweep = time.monotonic()
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=200, max_records=2000)
            except Exception:  # aiokafka retries connections itself; never let the hub die
                log.exception("hub fetch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            for tp, records in batches.items():
                if records:
                    self._positions[tp] = records[-1].offset + 1
                for record in records:
                    wanted = COMPLETION_TYPES if tp.topic == completions else OWNER_TYPES
                    try:
                        event = codec.decode_if(
                            record.value,
                            record.headers,
                            wanted,
                            topic=tp.topic,
                            partition=tp.partition,
                            offset=record.offset,
                        )
                    except EventDecodeError as exc:  # the processors dead-letter it
                        self.decode_errors += 1
                        log.warning("hub skipped undecodable record: %s", exc)
                        continue
                    if event is None:  # a type the hub ignores, skipped by its header
                        continue
                    if tp.topic == completions:
                        self._fold(event, tp.partition, record.offset)
                    elif isinstance(event, PromptSubmitted):
                        self._learn_owner(event)
            now = time.monotonic()
            if now - last_sweep > 5:
                self.sweep(now)
                last_sweep = now

    # -- folding and fan-out -------------------------------------------------------------
    def _learn_owner(self, event: PromptSubmitted) -> None:
        self._owners[event.request_id] = Owner(event.user_id, event.conversation_id, event.model)
        self._owners.move_to_end(event.request_id)
        while len(self._owners) > self._settings.owners_max:
            self._owners.popitem(last=False)

    def _fold(self, event: Any, partition: int, offset: int) -> None:
        if not isinstance(
            event, CompletionStarted | TokenChunk | CompletionFinished | CompletionFailed
        ):
            return
        rid = event.request_id
        buf = self._buffers.get(rid)
        if buf is None:
            buf = self._buffers[rid] = RequestBuffer(rid, partition, offset)
        buf.touched = time.monotonic()
        if event.attempt < buf.attempt:
            return  # a superseded attempt: the highest wins
        if event.attempt > buf.attempt:
            buf.attempt, buf.chunks, buf.terminal = event.attempt, [], None
            buf.anchored, buf.first_seq = False, None
        if buf.terminal is not None:
            return  # duplicate delivery after the end
        out = self._to_stream_event(event, buf)
        if out is None:
            return
        if out.kind == "chunk":
            buf.chunks.append(out)
        elif out.kind in ("done", "error"):
            buf.terminal = out
        self._fan_out(rid, out)

    def _to_stream_event(self, event: Any, buf: RequestBuffer) -> StreamEvent | None:
        at = event.occurred_at.timestamp()
        rid, attempt = event.request_id, event.attempt
        if isinstance(event, CompletionStarted):
            buf.model = event.model
            if not buf.chunks:
                buf.anchored = True
            return StreamEvent("started", rid, attempt, occurred_at=at, anchored=buf.anchored)
        if isinstance(event, TokenChunk):
            expected = buf.chunks[-1].seq + 1 if buf.chunks else None
            if expected is None:
                buf.first_seq = event.seq
                buf.anchored = buf.anchored or event.seq == 0
            elif event.seq < expected:
                return None  # at-least-once duplicate (order within a partition holds)
            return StreamEvent(
                "chunk",
                rid,
                attempt,
                event.seq,
                event.text,
                event.token_count,
                occurred_at=at,
                anchored=buf.anchored,
                first_seq=buf.first_seq,
                # the SSE bytes, encoded once and shared by every subscriber watching now
                # (unwatched: a later subscriber formats its snapshot itself)
                wire=chunk_frame(rid, attempt, event.seq, event.text, event.token_count)
                if rid in self._subscribers
                else b"",
            )
        if isinstance(event, CompletionFinished):
            model = buf.model or (o.model if (o := self._owners.get(rid)) else None)
            data = {
                "request_id": rid,
                "attempt": attempt,
                "finish_reason": event.finish_reason,
                "usage": {
                    "prompt_tokens": event.usage.prompt_tokens,
                    "completion_tokens": event.usage.completion_tokens,
                },
                "model": model,
                "ttft_ms": event.ttft_ms,
            }
            return StreamEvent(
                "done",
                rid,
                attempt,
                data=data,
                occurred_at=at,
                anchored=buf.anchored,
                first_seq=buf.first_seq,
            )
        assert isinstance(event, CompletionFailed)
        data = {
            "error": {
                "message": event.message,
                "type": "server_error",
                "code": event.error_code,
                "param": None,
            }
        }
        return StreamEvent(
            "error",
            rid,
            attempt,
            data=data,
            occurred_at=at,
            anchored=buf.anchored,
            first_seq=buf.first_seq,
        )

    def _fan_out(self, request_id: str, event: StreamEvent) -> None:
        subs = self._subscribers.get(request_id)
        if not subs:
            return
        for sub in tuple(subs):
            if not sub.push(event):
                # never wait for a slow client: drop it; its stream tells it to reconnect
                sub.overflowed = True
                self.overflows += 1
                self.unsubscribe(sub)
                sub.wake()

    # -- subscribers ------------------------------------------------------------------------
    def subscribe(self, request_id: str) -> tuple[Subscriber, Snapshot | None]:
        """Register, then snapshot the buffer, atomically (no await between the two)."""
        sub = Subscriber(request_id, self._settings.client_queue_size)
        self._subscribers.setdefault(request_id, set()).add(sub)
        buf = self._buffers.get(request_id)
        if buf is None:
            return sub, None
        events = tuple(buf.chunks) + ((buf.terminal,) if buf.terminal else ())
        return sub, Snapshot(buf.partition, buf.first_offset, buf.anchored, events)

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subscribers.get(sub.request_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.request_id]

    def owner(self, request_id: str) -> Owner | None:
        return self._owners.get(request_id)

    def saw_submitted(self, request_id: str) -> bool:
        """The hub read this request's PromptSubmitted itself (it tails the log from its
        start), so every completion event of the request lies after the hub joined the
        log: the hub will see its end, and nobody needs to poll Postgres for it."""
        return request_id in self._owners

    def position_of(self, request_id: str) -> tuple[int, int] | None:
        """(partition, first offset the hub saw) of a request it has events of."""
        buf = self._buffers.get(request_id)
        return None if buf is None else (buf.partition, buf.first_offset)

    def model_of(self, request_id: str) -> str | None:
        buf = self._buffers.get(request_id)
        owner = self._owners.get(request_id)
        return (buf.model if buf else None) or (owner.model if owner else None)

    def sweep(self, now: float | None = None) -> int:
        """Forget finished requests after `finished_ttl_s` and silent ones after `idle_ttl_s`."""
        now = time.monotonic() if now is None else now
        s = self._settings
        stale = [
            rid
            for rid, b in self._buffers.items()
            if rid not in self._subscribers
            and now - b.touched > (s.finished_ttl_s if b.terminal else s.idle_ttl_s)
        ]
        for rid in stale:
            del self._buffers[rid]
        return len(stale)

    # -- metrics -------------------------------------------------------------------------------
    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    @property
    def buffered_requests(self) -> int:
        return len(self._buffers)

    def consumer_lag(self) -> int:
        """Records behind the partitions' high-water marks (from the last fetch responses)."""
        consumer = self._consumer
        if consumer is None:
            return 0
        lag = 0
        for tp, position in self._positions.items():
            high = consumer.highwater(tp)
            if high is not None:
                lag += max(0, high - position)
        return lag
