"""The hub: ONE Kafka consumer per process over chat.completions, fanned out in memory.

It reads the live end of `chat.completions` (no consumer group; with several query
processes, each reads its share of the partitions: `hub_share`) and keeps, per request,
the chunks of the highest attempt it has seen, so a subscriber can catch up from memory
while a generation is live. It also tails
`chat.conversations` for PromptSubmitted, learning request -> owner before the projection
has written `chatlog.completions` (a stream is usually opened milliseconds after the POST),
and for ConversationDeleted, after which the conversation's requests are gone.

Four jobs, one module each: the Kafka fetch (`hub_fetch`), the pure per-request fold
(`hub_fold`), owners (`hub_owners`) and fan-out (`hub_fanout`); this class dispatches
records between them. Subscribing is synchronous: registration and the buffer snapshot
happen without an await in between, and each record is folded and fanned out
synchronously too, so every event is either in the snapshot or in the subscriber's queue,
never both, never neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from confluent_kafka import Message

from query_api.backfill import BackfillLimiter
from query_api.frame_writer import FrameWriter
from query_api.hub_fanout import FanOut, Subscriber
from query_api.hub_fetch import LiveReader
from query_api.hub_fold import Fold, Snapshot
from query_api.hub_owners import Owner, Owners
from query_api.hub_share import Share
from query_api.settings import QuerySettings
from schemas import codec
from schemas.errors import EventDecodeError
from schemas.events import (
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    ConversationDeleted,
    PromptSubmitted,
    TokenChunk,
)
from schemas.wire import TOKEN_CHUNK_V1_HEADERS, read_token_chunk_v1

__all__ = ["Hub", "Owner", "Snapshot", "Subscriber"]

log = logging.getLogger(__name__)

# the event types the hub folds, per topic; others are skipped without decoding their body
COMPLETION_TYPES = frozenset(
    c.event_type for c in (CompletionStarted, TokenChunk, CompletionFinished, CompletionFailed)
)
CONVERSATION_TYPES = frozenset({PromptSubmitted.event_type, ConversationDeleted.event_type})


class Hub:
    """Fans chat.completions out to subscribers by request id. Start with `await start()`."""

    def __init__(self, settings: QuerySettings) -> None:
        self._settings = settings
        self.fold = Fold(settings.hub_max_requests, settings.hub_max_bytes)
        self.owners = Owners(settings.owners_max)
        self._deleted = self.owners.deleted_conversations  # read per chunk: no method call
        # monotonic time of the batch being handled (one clock read per batch, not per
        # record): what the fold's TTLs and recency order go by
        self._now = time.monotonic()
        self.fanout = FanOut(settings.client_queue_size)
        self.share = Share(settings.query_instance, settings.query_instances)
        completions = settings.topics.completions
        self._reader = LiveReader(
            settings,
            (completions, settings.topics.conversations),
            lambda topic, partition: topic != completions or self.share.owns(partition),
        )
        # partitions of chat.completions read since a stream needed them (hub_share)
        self.adopted: set[int] = set()
        self._adopting: dict[int, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        # the process's Kafka backfills (durable.DurableSource), one bound for every stream
        self.backfills = BackfillLimiter(settings.backfill_concurrency)
        self.started_at = 0.0  # epoch seconds: where the hub joined the log
        self.decode_errors = 0
        self.records_read = 0  # both topics: the work a share of partitions divides

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        await self._reader.open()
        self.started_at = time.time()
        self._task = asyncio.create_task(self._run(), name="query-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._reader.close()
        self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        completions = self._settings.topics.completions
        sweep_every = self._settings.hub_sweep_s
        last_sweep = time.monotonic()
        while True:
            try:
                records = await self._reader.fetch()
            except Exception:  # librdkafka reconnects by itself; never let the hub die
                log.exception("hub fetch failed; retrying")
                await asyncio.sleep(1.0)
                continue
            self._now = time.monotonic()
            self.records_read += len(records)
            for record in records:
                if record.error() is not None:  # transport trouble, reported per record
                    log.warning("hub fetch: %s", record.error())
                    continue
                self._handle(record, completions)
            self.write_held()
            now = time.monotonic()
            if now - last_sweep > sweep_every:
                self.sweep(now)
                last_sweep = now

    def _handle(self, record: Message, completions: str) -> None:
        topic, partition, offset = record.topic(), record.partition(), record.offset()
        assert topic is not None and partition is not None and offset is not None
        self._reader.positions[(topic, partition)] = offset + 1
        value, headers = record.value(), record.headers()
        if topic != completions:
            wanted = CONVERSATION_TYPES
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
                        f.conversation_id,
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
            self._learn_owner(event, partition)
        elif isinstance(event, ConversationDeleted):
            self._delete_conversation(event)

    # -- dispatch between the fold, owners and fan-out ------------------------------------
    def _learn_owner(self, event: PromptSubmitted, partition: int = 0) -> None:
        self.owners.learn(event, partition)

    def _delete_conversation(self, event: ConversationDeleted) -> None:
        # the owners the hub learnt, and buffers of requests older than the hub
        rids = {*self.owners.delete(event), *self.fold.drop_conversation(event.conversation_id)}
        self.fanout.close_deleted(rids)

    def _fold(self, event: Any, partition: int, offset: int) -> None:
        if isinstance(event, TokenChunk):
            self._fold_chunk(
                event.request_id,
                event.conversation_id,
                event.attempt,
                event.seq,
                event.text,
                event.token_count,
                event.occurred_at.timestamp(),
                partition,
                offset,
            )
            return
        if not isinstance(event, CompletionStarted | CompletionFinished | CompletionFailed):
            return
        if self.owners.deleted(event.conversation_id):
            return  # a generation outliving its conversation's deletion: not served again
        rid = event.request_id
        owner = self.owners.get(rid)
        out = self.fold.event(event, partition, offset, self._now, owner.model if owner else None)
        if out is not None:
            self.fanout.send(self.fanout.subscribers.get(rid), out)
            if self.fold.over_bounds():
                self._bound(rid)

    def _fold_chunk(
        self,
        request_id: str,
        conversation_id: str,
        attempt: int,
        seq: int,
        text: str,
        token_count: int,
        occurred_at: float,
        partition: int,
        offset: int,
    ) -> None:
        """A TokenChunk's fields (from either decode path) into the fold and out (the hot
        path: one lookup per collaborator, the bounds checked inline)."""
        if conversation_id in self._deleted:
            return
        subs = self.fanout.subscribers.get(request_id)
        fold = self.fold
        out = fold.chunk(
            request_id,
            conversation_id,
            attempt,
            seq,
            text,
            token_count,
            occurred_at,
            partition,
            offset,
            self._now,
            bool(subs),
        )
        if out is not None:
            if subs:
                self.fanout.send(subs, out)
            if fold.bytes > fold.max_bytes or len(fold.buffers) > fold.max_requests:
                self._bound(request_id)

    def _bound(self, request_id: str) -> None:
        for rid in self.fold.evict(keep=request_id):
            self.owners.forget_buffer(rid)

    def write_held(self) -> None:
        """Write the frames this batch's live chunks left with idle streams' writers."""
        self.fanout.write_held()

    @property
    def held_writers(self) -> list[FrameWriter]:
        return self.fanout.held_writers

    # -- subscribers ------------------------------------------------------------------------
    def subscribe(self, request_id: str) -> tuple[Subscriber, Snapshot | None]:
        """Register, then snapshot the buffer, atomically (no await between the two)."""
        return self.fanout.add(request_id), self.fold.snapshot(request_id)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.fanout.remove(sub)

    def snapshot(self, request_id: str) -> Snapshot | None:
        return self.fold.snapshot(request_id)

    def owner(self, request_id: str) -> Owner | None:
        return self.owners.get(request_id)

    async def wait_owner(self, request_id: str, timeout_s: float) -> Owner | None:
        """The request's owner as soon as the hub reads its PromptSubmitted (None after
        `timeout_s`)."""
        return await self.owners.wait(request_id, timeout_s)

    def conversation_deleted(self, conversation_id: str) -> bool:
        """The hub read this conversation's ConversationDeleted (Postgres may lag it)."""
        return self.owners.deleted(conversation_id)

    def saw_submitted(self, request_id: str) -> bool:
        """The hub read this request's PromptSubmitted itself (it tails the log from its
        start), reads its partition since then, and has dropped nothing of it since, so
        it will see its end: nobody needs to poll Postgres for it. Once its buffer is
        dropped (TTL, bounds), Postgres is the only source of what the hub saw, and a
        waiting stream polls it again; so it does for a partition adopted later (its end
        may have come before)."""
        owner = self.owners.get(request_id)
        return (
            owner is not None
            and self.share.owns(owner.partition)
            and self.owners.saw_submitted(request_id)
        )

    # -- the share of partitions (hub_share) ---------------------------------------------
    def reads(self, partition: int) -> bool:
        """This hub reads `partition` of chat.completions (owned, or adopted)."""
        return self.share.owns(partition) or partition in self.adopted

    async def adopt(self, partition: int) -> None:
        """Read `partition` of chat.completions too, from its live end on (once, however
        many streams ask at the same time). If Kafka refuses, the stream is served all the
        same: it polls Postgres, as for a request the hub never saw."""
        if self.reads(partition):
            return
        pending = self._adopting.get(partition)
        if pending is None:
            pending = asyncio.ensure_future(
                self._reader.add(self._settings.topics.completions, partition)
            )
            self._adopting[partition] = pending
            pending.add_done_callback(lambda done: self._adopted(partition, done))
        with contextlib.suppress(Exception):  # logged by _adopted
            await asyncio.shield(pending)  # a stream that goes away leaves it running

    def _adopted(self, partition: int, done: asyncio.Future[None]) -> None:
        self._adopting.pop(partition, None)
        if done.cancelled():
            return
        if (exc := done.exception()) is not None:
            log.warning("hub could not adopt partition %d: %r", partition, exc)
            return
        self.adopted.add(partition)
        log.info("hub adopted chat.completions partition %d", partition)

    @property
    def partitions_read(self) -> int:
        return self._reader.partitions(self._settings.topics.completions)

    def position_of(self, request_id: str) -> tuple[int, int] | None:
        """(partition, first offset the hub saw) of a request it has events of."""
        buf = self.fold.buffers.get(request_id)
        return None if buf is None else (buf.partition, buf.first_offset)

    def model_of(self, request_id: str) -> str | None:
        buf = self.fold.buffers.get(request_id)
        owner = self.owners.get(request_id)
        return (buf.model if buf else None) or (owner.model if owner else None)

    def sweep(self, now: float | None = None) -> int:
        """Forget finished requests after `finished_ttl_s` and silent ones after `idle_ttl_s`."""
        now = time.monotonic() if now is None else now
        s = self._settings
        stale = self.fold.sweep(now, self.fanout.subscribers, s.finished_ttl_s, s.idle_ttl_s)
        for rid in stale:
            self.owners.forget_buffer(rid)
        return len(stale)

    # -- metrics -------------------------------------------------------------------------------
    @property
    def subscriber_count(self) -> int:
        return self.fanout.count

    @property
    def buffered_requests(self) -> int:
        return len(self.fold.buffers)

    @property
    def buffered_bytes(self) -> int:
        return self.fold.bytes

    @property
    def overflows(self) -> int:
        return self.fanout.overflows

    def consumer_lag(self) -> int:
        """Records behind the partitions' high-water marks (from the last fetch responses)."""
        return self._reader.lag()
