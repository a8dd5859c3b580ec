"""The live view of inference replicas, read from the compacted chat.replicas topic (#14).

Why a beat topic rather than the inference consumer group's membership: membership says a
consumer is in the group, not which model it serves, how loaded it is or whether its
engine still generates; it needs admin calls to describe, and a SIGKILLed member stays a
member until its session times out (10 s). A beat carries model, load and TTFT, and a
compacted topic keeps each replica's last beat, so a reader that starts late (a restarted
command API) knows every replica at once by reading from the beginning, with no group of
its own. Both the command API (breakers) and the query API (`/v1/models`) read it.

A replica is live while its last beat is `serving` and younger than `stale_s` (several
beat intervals); a clean stop's last beat says `stopped`; a killed replica's beat just
ages out. Age is measured from the beat's `occurred_at`, so beats replayed at start-up
from the compacted log do not look fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import decode
from schemas.errors import EventDecodeError
from schemas.events import ReplicaHeartbeat

log = logging.getLogger(__name__)
FORGET_AFTER_S = 24 * 3600.0  # a replica silent this long is no longer "known but down"


@dataclass(frozen=True)
class ModelHealth:
    """What the beats say about one model now."""

    model: str
    live_replicas: int
    running: int
    waiting: int
    ttft_ms: float | None
    last_beat_age_s: float | None

    @property
    def available(self) -> bool:
        return self.live_replicas > 0


class ReplicaTable:
    """The last beat of each replica, and the per-model view over them (pure: the clock
    is injected, so unit tests drive it)."""

    def __init__(self, stale_s: float, clock: Callable[[], float] = time.time) -> None:
        self.stale_s = stale_s
        self._clock = clock
        self.beats: dict[str, ReplicaHeartbeat] = {}

    def apply(self, beat: ReplicaHeartbeat) -> None:
        known = self.beats.get(beat.replica_id)
        if known is None or known.occurred_at <= beat.occurred_at:
            self.beats[beat.replica_id] = beat

    def forget(self, replica_id: str) -> None:
        self.beats.pop(replica_id, None)

    def _live(self, beat: ReplicaHeartbeat, now: float) -> bool:
        stale = max(self.stale_s, 3 * beat.interval_ms / 1000)
        return beat.state == "serving" and now - beat.occurred_at.timestamp() <= stale

    def health(self, model: str) -> ModelHealth | None:
        """None: no replica of `model` was ever seen (not known, so not judged)."""
        now = self._clock()
        mine = [
            b
            for b in self.beats.values()
            if b.model == model and now - b.occurred_at.timestamp() <= FORGET_AFTER_S
        ]
        if not mine:
            return None
        live = [b for b in mine if self._live(b, now)]
        ttfts = sorted(b.ttft_ms for b in live if b.ttft_ms is not None)
        return ModelHealth(
            model=model,
            live_replicas=len(live),
            running=sum(b.running for b in live),
            waiting=sum(b.waiting for b in live),
            ttft_ms=ttfts[len(ttfts) // 2] if ttfts else None,
            last_beat_age_s=now - max(b.occurred_at.timestamp() for b in mine),
        )

    def models(self) -> list[str]:
        now = self._clock()
        return sorted(
            {
                b.model
                for b in self.beats.values()
                if now - b.occurred_at.timestamp() <= FORGET_AFTER_S
            }
        )


class ReplicaView:
    """A ReplicaTable fed by a group-less consumer of chat.replicas (from the beginning).

    `kafka` is `InfraSettings.aiokafka_options()`: the bootstrap list and the security
    settings (a SASL/TLS cluster refuses a consumer that has only the bootstrap list)."""

    def __init__(self, kafka: dict[str, Any], topic: str, stale_s: float, partitions: int) -> None:
        self.table = ReplicaTable(stale_s)
        self._kafka, self._topic, self._partitions = kafka, topic, partitions
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Returns at once: the consumer connects in the background (a service may start,
        and serve, while Kafka is away; until the beats come, no model is judged)."""
        self._task = asyncio.create_task(self._run(), name="replica-view")

    async def _connect(self) -> AIOKafkaConsumer:
        while True:
            consumer = AIOKafkaConsumer(**self._kafka, enable_auto_commit=False)
            try:
                await consumer.start()
                return consumer
            except Exception as exc:
                log.warning("replica view: Kafka unreachable, retrying: %r", exc)
                with contextlib.suppress(Exception):
                    await consumer.stop()
                await asyncio.sleep(2.0)

    async def _run(self) -> None:
        consumer = self._consumer = await self._connect()
        # Every topic has the configured partition count (infra.clients.ensure_topics).
        tps = [TopicPartition(self._topic, p) for p in range(self._partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except Exception as exc:  # a broker away: the beats age out meanwhile, as they should
                log.warning("replica view: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                for rec in records:
                    if rec.value is None:  # a tombstone
                        if rec.key is not None:
                            self.table.forget(rec.key.decode())
                        continue
                    try:
                        event = decode(rec.value, rec.headers)
                    except EventDecodeError:
                        continue
                    if isinstance(event, ReplicaHeartbeat):
                        self.table.apply(event)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
