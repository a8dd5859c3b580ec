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
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from query_api.events import StreamEvent
from query_api.frame_writer import FrameWriter
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
from schemas.wire import TOKEN_CHUNK_V1_HEADERS, read_token_chunk_v1

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
    `direct`, set by an idle stream, takes an event without queueing it or waking the
    stream (True: taken; its frame is then written by `Hub.write_held`); it is only tried
    while nothing is queued, so no event overtakes another.
    """

    __slots__ = ("_waiter", "direct", "maxsize", "overflowed", "pending", "request_id")

    def __init__(self, request_id: str, maxsize: int) -> None:
        self.request_id = request_id
        self.maxsize = maxsize
        self.pending: list[StreamEvent] = []
        self.overflowed = False
        self.direct: Callable[[StreamEvent], bool] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event: StreamEvent) -> bool:
        """Deliver or queue an event for the stream; False (nothing done) when the buffer
        is full."""
        if not self.pending and (direct := self.direct) is not None and direct(event):
            return True
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


def live_ends(consumer: Consumer, topics: tuple[str, ...]) -> list[TopicPartition]:
    """Every partition of `topics` at its current end offset (blocking: run in a thread)."""
    meta = consumer.list_topics(timeout=10)
    missing = [t for t in topics if not (t in meta.topics and meta.topics[t].partitions)]
    if missing:
        raise RuntimeError(f"topics {missing} do not exist")
    ends = []
    for t in topics:
        for p in sorted(meta.topics[t].partitions):
            _, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
            ends.append(TopicPartition(t, p, high))
    return ends


def fetch_batch(consumer: Consumer, max_records: int, wait_s: float) -> list[Message]:
    """The next records: waits up to `wait_s` for the first, then takes what is queued.

    (`consume(n, timeout)` alone would wait the whole timeout for `n` records.)
    """
    first = consumer.poll(wait_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_records - 1, 0)]


class Hub:
    """Fans chat.completions out to subscribers by request id. Start with `await start()`."""

    def __init__(self, settings: QuerySettings) -> None:
        self._settings = settings
        self._buffers: dict[str, RequestBuffer] = {}
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._owners: OrderedDict[str, Owner] = OrderedDict()
        self._owner_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._consumer: Consumer | None = None
        # librdkafka fetches and parses in its own threads; this one thread only waits for
        # records and hands them over, so the event loop never blocks on Kafka
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="query-hub-fetch")
        self._task: asyncio.Task[None] | None = None
        self._positions: dict[tuple[str, int], int] = {}
        # writers holding live chunks offered during this batch (`Subscriber.direct`)
        self.held_writers: list[FrameWriter] = []
        self.started_at = 0.0  # epoch seconds: where the hub joined the log
        self.overflows = 0
        self.decode_errors = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Assign every partition of both topics at their ends (the live end).

        A confluent-kafka consumer rather than aiokafka's: aiokafka parses every fetch
        response in Python on the event loop (~3 µs per record in the small batches of a
        live stream, a quarter of the hub's time), librdkafka does it in C off the loop.
        """
        topics = self._settings.topics
        loop = asyncio.get_running_loop()
        consumer = Consumer(
            {
                "bootstrap.servers": self._settings.kafka_bootstrap,
                # required by the client; never joined (assign, no subscribe) nor committed
                "group.id": f"query-hub-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "latest",
                # Let the broker gather a batch for up to `hub_fetch_wait_ms` (or until
                # `hub_fetch_min_bytes`): a trickle of one-record fetches costs more CPU
                # (here and in the broker) than the records in them.
                "fetch.wait.max.ms": self._settings.hub_fetch_wait_ms,
                "fetch.min.bytes": self._settings.hub_fetch_min_bytes,
            }
        )
        try:
            wanted = (topics.completions, topics.conversations)
            ends = await loop.run_in_executor(self._thread, live_ends, consumer, wanted)
            consumer.assign(ends)
        except BaseException:
            await loop.run_in_executor(self._thread, consumer.close)
            raise
        self._positions = {(tp.topic, tp.partition): tp.offset for tp in ends}
        self.started_at = time.time()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="query-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            # after the fetch thread's last poll (same thread): never close mid-poll
            await asyncio.get_running_loop().run_in_executor(self._thread, self._consumer.close)
        self._task = self._consumer = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        loop = asyncio.get_running_loop()
        completions = self._settings.topics.completions
        last_sweep = time.monotonic()
        while True:
            try:
                records = await loop.run_in_executor(self._thread, fetch_batch, consumer, 2000, 0.2)
            except Exception:  # librdkafka reconnects by itself; never let the hub die
                log.exception("hub fetch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            for record in records:
                if record.error() is not None:  # transport trouble, reported per record
                    log.warning("hub fetch: %s", record.error())
                    continue
                self._handle(record, completions)
            self.write_held()
            now = time.monotonic()
            if now - last_sweep > 5:
                self.sweep(now)
                last_sweep = now

    def _handle(self, record: Message, completions: str) -> None:
        topic, partition, offset = record.topic(), record.partition(), record.offset()
        assert topic is not None and partition is not None and offset is not None
        self._positions[(topic, partition)] = offset + 1
        value, headers = record.value(), record.headers()
        if topic != completions:
            wanted = OWNER_TYPES
        else:
            wanted = COMPLETION_TYPES
            if headers is not None and tuple(headers) == TOKEN_CHUNK_V1_HEADERS:
                # the hot path: most records are chunks (schemas.wire says why)
                try:
                    f = read_token_chunk_v1(value)  # type: ignore[arg-type]
                except (ValueError, TypeError):
                    pass  # decode_if below decodes it or names the error
                else:
                    self._fold_chunk(
                        f.request_id,
                        f.attempt,
                        f.seq,
                        f.text,
                        f.token_count,
                        f.occurred_at_ms / 1000,
                        partition,
                        offset,
                    )
                    return
        try:
            event = codec.decode_if(
                value,  # type: ignore[arg-type]
                headers,
                wanted,
                topic=topic,
                partition=partition,
                offset=offset,
            )
        except EventDecodeError as exc:  # the processors dead-letter it
            self.decode_errors += 1
            log.warning("hub skipped undecodable record: %s", exc)
            return
        if event is None:  # a type the hub ignores, skipped by its header
            return
        if topic == completions:
            self._fold(event, partition, offset)
        elif isinstance(event, PromptSubmitted):
            self._learn_owner(event)

    # -- folding and fan-out -------------------------------------------------------------
    def _learn_owner(self, event: PromptSubmitted) -> None:
        self._owners[event.request_id] = Owner(event.user_id, event.conversation_id, event.model)
        self._owners.move_to_end(event.request_id)
        while len(self._owners) > self._settings.owners_max:
            self._owners.popitem(last=False)
        for waiter in self._owner_waiters.pop(event.request_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _fold(self, event: Any, partition: int, offset: int) -> None:
        if isinstance(event, TokenChunk):
            at = event.occurred_at.timestamp()
            self._fold_chunk(
                event.request_id,
                event.attempt,
                event.seq,
                event.text,
                event.token_count,
                at,
                partition,
                offset,
            )
            return
        if not isinstance(event, CompletionStarted | CompletionFinished | CompletionFailed):
            return
        buf = self._buffer_for(event.request_id, event.attempt, partition, offset)
        if buf is None:
            return
        out = self._to_stream_event(event, buf)
        if out.kind in ("done", "error"):
            buf.terminal = out
        self._fan_out(self._subscribers.get(event.request_id), out)

    def _buffer_for(
        self, request_id: str, attempt: int, partition: int, offset: int
    ) -> RequestBuffer | None:
        """The request's buffer, switched to `attempt` when that is newer; None when the
        event is stale (a superseded attempt, or a duplicate delivered after the end)."""
        buf = self._buffers.get(request_id)
        if buf is None:
            buf = self._buffers[request_id] = RequestBuffer(request_id, partition, offset)
        buf.touched = time.monotonic()
        if attempt < buf.attempt:
            return None  # a superseded attempt: the highest wins
        if attempt > buf.attempt:
            buf.attempt, buf.chunks, buf.terminal = attempt, [], None
            buf.anchored, buf.first_seq = False, None
        if buf.terminal is not None:
            return None  # duplicate delivery after the end
        return buf

    def _fold_chunk(
        self,
        request_id: str,
        attempt: int,
        seq: int,
        text: str,
        token_count: int,
        occurred_at: float,
        partition: int,
        offset: int,
    ) -> None:
        """A TokenChunk's fields (from either decode path) into the buffer and out."""
        buf = self._buffer_for(request_id, attempt, partition, offset)
        if buf is None:
            return
        chunks = buf.chunks
        if not chunks:
            buf.first_seq = seq
            buf.anchored = buf.anchored or seq == 0
        elif seq <= chunks[-1].seq:
            return  # at-least-once duplicate (order within a partition holds)
        subs = self._subscribers.get(request_id)
        out = StreamEvent(
            "chunk",
            request_id,
            attempt,
            seq,
            text,
            token_count,
            occurred_at=occurred_at,
            anchored=buf.anchored,
            first_seq=buf.first_seq,
            # the SSE bytes, encoded once and shared by every subscriber watching now
            # (unwatched: a later subscriber formats its snapshot itself)
            wire=chunk_frame(request_id, attempt, seq, text, token_count) if subs else b"",
        )
        chunks.append(out)
        self._fan_out(subs, out)

    def _to_stream_event(
        self, event: CompletionStarted | CompletionFinished | CompletionFailed, buf: RequestBuffer
    ) -> StreamEvent:
        at = event.occurred_at.timestamp()
        rid, attempt = event.request_id, event.attempt
        if isinstance(event, CompletionStarted):
            buf.model = event.model
            if not buf.chunks:
                buf.anchored = True
            return StreamEvent("started", rid, attempt, occurred_at=at, anchored=buf.anchored)
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

    def _fan_out(self, subs: set[Subscriber] | None, event: StreamEvent) -> None:
        """`event` to the request's subscribers (`subs`: the caller has looked them up)."""
        if not subs:
            return
        for sub in tuple(subs):
            if not sub.push(event):
                # never wait for a slow client: drop it; its stream tells it to reconnect
                sub.overflowed = True
                self.overflows += 1
                self.unsubscribe(sub)
                sub.wake()

    def write_held(self) -> None:
        """Write the frames this batch's live chunks left with idle streams' writers: one
        write per client per batch however many of its chunks the batch held."""
        writers = self.held_writers  # one list for the hub's life: streams keep a reference
        for writer in writers:
            writer.write_held()  # never offers: the list does not change meanwhile
        writers.clear()

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

    async def wait_owner(self, request_id: str, timeout_s: float) -> Owner | None:
        """The request's owner as soon as the hub reads its PromptSubmitted (None after
        `timeout_s`). A client opens its stream milliseconds after the POST, often before
        the hub's next fetch: waking on arrival instead of polling saves it a poll period."""
        owner = self._owners.get(request_id)
        if owner is not None or timeout_s <= 0:
            return owner
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._owner_waiters.setdefault(request_id, [])
        waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            pass
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters and self._owner_waiters.get(request_id) is waiters:
                del self._owner_waiters[request_id]
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
        for (topic, partition), position in self._positions.items():
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high >= 0:
                lag += max(0, high - position)
        return lag
