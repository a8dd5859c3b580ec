"""ReplicaWorker: one replica's consumer, scheduler, engine and publisher, with no Ray in it.

The Ray deployment wraps it; tests and `python -m inference --no-ray` run it bare.
The consumer loop reads chat.conversations in its model's group: a PromptSubmitted for
another model is skipped (that model's own group answers it); one for this model is
looked up in the attempt ledger (skipped if final, else attempt = last + 1), prepared
by the engine and queued; a CancelRequested cancels. When the queue is full, the
consumer pauses its partitions (backpressure) and resumes once there is room. Offsets
are committed periodically, never past an unfinished prompt (see `offsets.py`); a prompt
is finished once every event of its last attempt, and its final on chat.answers, is
acknowledged. A failed commit is retried at the next beat. A ledger that cannot be read
at an assignment stops the replica's intake (unhealthy) rather than regenerate prompts
that may have finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from inference.chunker import Chunker, Pace
from inference.detok import IncrementalDetokenizer, StopMatcher
from inference.engine import Engine, EngineError
from inference.heartbeat import Heartbeat
from inference.ledger import AttemptLedger, LedgerUnavailable, scan_partitions
from inference.metrics import WorkerMetrics
from inference.offsets import OffsetTracker
from inference.publisher import Publisher
from inference.request import Request
from inference.scheduler import Scheduler
from inference.settings import InferenceSettings
from infra.clients import aio_producer, ensure_topics
from schemas.codec import EVENT_TYPE_HEADER, decode
from schemas.errors import EventDecodeError
from schemas.events import CancelRequested, CompletionFailed, CompletionFinished, PromptSubmitted

log = logging.getLogger(__name__)


class ReplicaWorker:
    """See the module docstring. `start()`, then `run()` until `stop()`."""

    def __init__(
        self,
        settings: InferenceSettings,
        engine: Engine,
        *,
        replica_id: str | None = None,
        observer: Callable[[Request], None] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.replica_id = replica_id or f"replica-{uuid.uuid4().hex[:8]}"
        self.metrics = WorkerMetrics(engine.model_id, self.replica_id)
        self.ledger = AttemptLedger()
        self.offsets = OffsetTracker()
        self._topics = settings.topics
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: AIOKafkaConsumer | None = None
        self.publisher = Publisher(
            lambda: aio_producer(settings),
            self._topics.completions,
            self._topics.answers,
            max_events=settings.publisher_max_events,
            max_bytes=settings.publisher_max_bytes,
            metrics=self.metrics,
        )
        self.pace = Pace(
            settings.chunk_interval_ms / 1000,
            settings.chunk_events_per_s,
            settings.chunk_interval_max_ms / 1000,
        )
        self.scheduler = Scheduler(
            engine,
            self.publisher,
            self.metrics,
            replica_id=self.replica_id,
            max_batch=settings.max_batch,
            on_done=self._request_done,
            observer=observer,
            delivery_retries=settings.delivery_retries,
            retry_backoff_s=settings.delivery_backoff_s,
            expired=self._expired,
            pace=self.pace,
        )
        self._beat_producer = aio_producer(settings)
        self.heartbeat = Heartbeat(
            self._beat_producer,
            self._topics.replicas,
            replica_id=self.replica_id,
            model=engine.model_id,
            interval_s=settings.heartbeat_interval_s,
            load=lambda: (len(self.scheduler.running), len(self.scheduler.waiting)),
            serving=lambda: self.healthy()[0],
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.assigned: set[int] = set()  # assigned AND scanned by the ledger: safe to process
        self._rewind: dict[int, int] = {}  # records fetched before the ledger was ready
        self._peeker: AIOKafkaConsumer | None = None
        self._full = asyncio.Event()  # set while partitions are paused for backpressure
        self._early_cancels: OrderedDict[str, None] = OrderedDict()
        self.intake_error: str | None = None  # the ledger could not be read: stop taking work

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        await asyncio.to_thread(ensure_topics, s)  # idempotent; a lone worker needs them too
        await self.publisher.start()
        await self._beat_producer.start()
        common: dict[str, Any] = s.aiokafka_options()
        self._reader = AIOKafkaConsumer(**common, enable_auto_commit=False)
        await self._reader.start()
        self._peeker = AIOKafkaConsumer(
            **common, enable_auto_commit=False, max_partition_fetch_bytes=256 * 1024
        )
        await self._peeker.start()
        self._consumer = AIOKafkaConsumer(
            **common,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(500, s.session_timeout_ms // 4),
            client_id=self.replica_id,
        )
        self._consumer.subscribe([self._topics.conversations], listener=_Rebalance(self))
        await self._consumer.start()
        for name, coro in (
            ("consume", self._consume()),
            ("schedule", self.scheduler.run()),
            ("flush", self.scheduler.run_flusher()),
            ("commit", self._commit_loop()),
            ("cancel-watch", self._watch_cancels()),
            ("heartbeat", self.heartbeat.run()),
        ):
            self._tasks.append(asyncio.create_task(coro, name=f"{self.replica_id}:{name}"))

    def healthy(self) -> tuple[bool, str]:
        """False, with the reason, when a loop has died (Serve's check_health uses this)."""
        if self.intake_error is not None:
            return False, self.intake_error
        for task in self._tasks:
            if task.done():
                exc = None if task.cancelled() else task.exception()
                return False, f"{task.get_name()} stopped: {exc!r}"
        if not self.publisher.alive:
            return False, "publisher stopped"
        return bool(self._tasks), "ok" if self._tasks else "not started"

    async def run(self) -> None:
        """Until a loop dies (re-raising its error) or the worker is stopped."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        """Stop consuming, commit what is safe, leave the group. Unfinished prompts are
        redelivered to the group (with attempt + 1); they are not drained here."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.heartbeat.stopped()
        with contextlib.suppress(Exception):
            await self._beat_producer.stop()
        self.scheduler.close()
        with contextlib.suppress(Exception):
            await self.publisher.drain()
        with contextlib.suppress(Exception):
            await self._commit()
        for client in (self._consumer, self._reader, self._peeker):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        await self.publisher.stop()
        self.engine.reset()

    # -- consuming ----------------------------------------------------------------------
    async def _consume(self) -> None:
        assert self._consumer is not None
        room_limit = self.settings.max_batch + self.settings.max_waiting
        while True:
            if self.intake_error is not None:
                raise LedgerUnavailable(self.intake_error)
            self._backpressure(room_limit)
            room = max(1, room_limit - self.scheduler.load)
            batch = await self._consumer.getmany(timeout_ms=100, max_records=room)
            for tp, records in batch.items():
                if tp.partition not in self.assigned:
                    # aiokafka may fetch between assignment and our listener: replay later
                    if records and tp.partition not in self._rewind:
                        self._rewind[tp.partition] = records[0].offset
                    continue
                for record in records:
                    self._handle(record)

    def _backpressure(self, limit: int) -> None:
        """Fetch only partitions whose ledger is ready, and none while the queue is full."""
        assert self._consumer is not None
        full = self.scheduler.load >= limit
        owned = self._consumer.assignment()
        want_paused = (
            set(owned) if full else {tp for tp in owned if tp.partition not in self.assigned}
        )
        paused = self._consumer.paused()
        if stop := want_paused - paused:
            self._consumer.pause(*stop)
        if go := (paused & set(owned)) - want_paused:
            self._consumer.resume(*go)
        if full:
            self._full.set()
        else:
            self._full.clear()

    async def _watch_cancels(self) -> None:
        """While paused for backpressure, read ahead for CancelRequested only.

        A cancel for a running request would otherwise wait behind the prompts that
        filled the queue. Prompts read ahead are not kept (they are fetched again after
        resuming); cancels are applied at once and remembered for prompts not yet seen.
        """
        assert self._consumer is not None and self._peeker is not None
        while True:
            await self._full.wait()
            parts = [tp for tp in self._consumer.assignment() if tp.partition in self.assigned]
            self._peeker.assign(parts)
            try:
                for tp in parts:
                    self._peeker.seek(tp, await self._consumer.position(tp))
            except IllegalStateError:  # a rebalance took a partition meanwhile: start over
                self._peeker.unsubscribe()
                await asyncio.sleep(0.1)
                continue
            while self._full.is_set():
                batch = await self._peeker.getmany(timeout_ms=100)
                for records in batch.values():
                    for rec in records:
                        if dict(rec.headers).get(EVENT_TYPE_HEADER) == b"CancelRequested":
                            self._early_cancel(rec)
            self._peeker.unsubscribe()

    def _early_cancel(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            event = decode(record.value, record.headers)
        except EventDecodeError:
            return  # the main consumer meets it later and skips it
        if isinstance(event, CancelRequested):
            self._early_cancels[event.request_id] = None
            while len(self._early_cancels) > 10_000:
                self._early_cancels.popitem(last=False)
            self.scheduler.cancel(event.request_id)

    def _handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        p, off = record.partition, record.offset
        try:
            event = decode(
                record.value, record.headers, topic=record.topic, partition=p, offset=off
            )
        except EventDecodeError as exc:
            # not ours to repair: the processors dead-letter it; we only must not stall on it
            log.warning("skipping undecodable record: %s", exc)
            self.offsets.consumed(p, off, done=True)
            return
        if isinstance(event, PromptSubmitted):
            self._prompt(event, p, off)
            return
        if isinstance(event, CancelRequested):
            self.scheduler.cancel(event.request_id)
        self.offsets.consumed(p, off, done=True)

    def _expired(self, prompt: PromptSubmitted, attempt: int) -> bool:
        """A first attempt past its queue deadline is not started: the command API's
        deadline keeper (the one writer) ends it with `queue_timeout`, and generating it
        now would answer a prompt its client was already told had failed."""
        limit = self.settings.queue_timeout_s
        return attempt == 1 and limit > 0 and time.time() - prompt.occurred_at.timestamp() > limit

    def _prompt(self, prompt: PromptSubmitted, partition: int, offset: int) -> None:
        if prompt.model != self.engine.model_id:
            # another model's prompt: its replicas, in their own group, answer it
            self.offsets.consumed(partition, offset, done=True)
            return
        known = self.ledger.get(prompt.request_id)
        if known is not None and known.final and known.unanswered is not None:
            self.offsets.consumed(partition, offset)
            self._answer(known.unanswered, partition, offset)
            return
        if (known is not None and known.final) or prompt.request_id in self.scheduler.by_request:
            self.offsets.consumed(partition, offset, done=True)  # finished, or a duplicate
            return
        if known is None and self._expired(prompt, 1):
            log.info(
                "%s: %s is past its queue deadline: not started", self.replica_id, prompt.request_id
            )
            self.offsets.consumed(partition, offset, done=True)
            return
        attempt = (known.last_attempt if known else 0) + 1
        self.ledger.note(prompt.request_id, attempt, final=False)
        self.offsets.consumed(partition, offset)
        s = self.settings
        req = Request(
            prompt=prompt,
            attempt=attempt,
            partition=partition,
            offset=offset,
            prepared=None,
            detok=IncrementalDetokenizer(self.engine.decode),
            stops=StopMatcher(prompt.params.stop),
            chunker=Chunker(self.pace, s.chunk_max_tokens),
        )
        params = replace(prompt.params, temperature=0.0) if s.greedy else prompt.params
        try:
            req.prepared = self.engine.prepare(prompt.messages, params)
        except EngineError as exc:
            self.scheduler.submit(req)
            self.scheduler.fail(req, exc)
            return
        self.scheduler.submit(req)
        if self._early_cancels.pop(prompt.request_id, 0) is None:  # cancelled while paused
            self.scheduler.cancel(prompt.request_id)

    def _answer(
        self, final: CompletionFinished | CompletionFailed, partition: int, offset: int
    ) -> None:
        """Write a finished request's final to chat.answers, where its replica died before
        it could (see ledger.py); the prompt's offset is done once Kafka has it."""

        def delivered(exc: BaseException | None) -> None:
            if exc is None:
                self.ledger.answered(final.request_id, final.attempt)
                self.offsets.finish(partition, offset)
                return
            log.warning("%s: answer of %s not written (%r), again", self.replica_id,
                        final.request_id, exc)  # fmt: skip
            asyncio.get_running_loop().call_later(1.0, self._answer, final, partition, offset)

        log.info("%s: %s's final was on chat.completions only: writing it to chat.answers",
                 self.replica_id, final.request_id)  # fmt: skip
        self.publisher.emit(final, partition, delivered, answers=True)

    def _request_done(self, req: Request) -> None:
        self.heartbeat.observe(req)
        self.ledger.note(req.request_id, req.attempt, final=True)
        self.offsets.finish(req.partition, req.offset)

    # -- offsets and rebalancing --------------------------------------------------------
    async def _commit_loop(self) -> None:
        """Commits every beat. A failed commit (CommitFailedError in a rebalance, a broker
        away) is logged and tried again at the next beat: what was not committed stays
        pending, and a dead loop would make the replica unhealthy, restart it and
        rebalance again, restarting every generation in flight."""
        while True:
            await asyncio.sleep(self.settings.commit_interval_ms / 1000)
            try:
                await self._commit()
            except Exception as exc:
                log.warning("%s: offset commit failed, retrying: %r", self.replica_id, exc)

    async def _commit(self) -> None:
        assert self._consumer is not None
        pending = self.offsets.pending_commits()
        if not pending:
            return
        topic = self._topics.conversations
        await self._consumer.commit(
            {TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in pending.items()}
        )
        self.offsets.mark_committed(pending)

    async def on_revoked(self, partitions: set[int]) -> None:
        with contextlib.suppress(Exception):
            await self._commit()
        self.scheduler.abandon(partitions)
        self.offsets.revoke(list(partitions))
        self.assigned -= partitions
        for p in partitions:
            self._rewind.pop(p, None)

    async def on_assigned(self, partitions: set[int]) -> None:
        assert self._consumer is not None and self._reader is not None
        topic = self._topics.conversations
        self._consumer.pause(*[TopicPartition(topic, p) for p in partitions])
        try:
            read = await self._scan(partitions)
        except LedgerUnavailable as exc:
            # guessing "not finished" would regenerate answers already given: take no work
            self.intake_error = f"ledger of partitions {sorted(partitions)} unreadable: {exc}"
            log.error("%s: %s", self.replica_id, self.intake_error)
            return
        for p in partitions:
            if (offset := self._rewind.pop(p, None)) is not None:
                self._consumer.seek(TopicPartition(topic, p), offset)
        self.offsets.assign(list(partitions))
        self.assigned |= partitions
        log.info(
            "%s assigned %s (ledger read %d records)", self.replica_id, sorted(partitions), read
        )

    async def _scan(self, partitions: set[int]) -> int:
        """`scan_partitions` from the committed offsets, tried `ledger_scan_tries` times
        (a timeout or a Kafka error each) before giving up."""
        assert self._consumer is not None and self._reader is not None
        s = self.settings
        topic = self._topics.conversations
        for attempt in range(1, s.ledger_scan_tries + 1):
            try:
                committed = {
                    p: await self._consumer.committed(TopicPartition(topic, p)) for p in partitions
                }
                return await scan_partitions(
                    self._reader,
                    self.ledger,
                    conversations=self._topics.conversations,
                    completions=self._topics.completions,
                    answers=self._topics.answers,
                    committed=committed,
                    lookback_ms=int(s.ledger_lookback_s * 1000),
                    timeout_s=s.ledger_scan_timeout_s,
                )
            except (LedgerUnavailable, KafkaError) as exc:
                if attempt == s.ledger_scan_tries:
                    raise LedgerUnavailable(repr(exc)) from exc
                log.warning("%s: ledger scan %d failed, again: %s", self.replica_id, attempt, exc)
                await asyncio.sleep(min(5.0, 0.5 * attempt))
        raise LedgerUnavailable("no scan tried")


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: ReplicaWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker.on_assigned({tp.partition for tp in assigned})
