"""The replica's beat on chat.replicas (#14; `infra.replicas` says why a beat topic).

Every `heartbeat_interval_s` the replica announces its model, its load (running, waiting)
and the median TTFT of its recent attempts, keyed by its replica id on the compacted
topic. A beat says `serving` only while the worker is healthy, so a replica whose intake
stopped is not counted as able to answer. A clean stop ends with a `stopped` beat; a
killed replica's last beat simply ages out at the readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
from collections import deque
from collections.abc import Callable

from aiokafka import AIOKafkaProducer

from inference.request import Request
from schemas.codec import encode
from schemas.events import ReplicaHeartbeat

log = logging.getLogger(__name__)


class Heartbeat:
    """Beats for one replica; `load()` gives (running, waiting), `serving()` its health."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        *,
        replica_id: str,
        model: str,
        interval_s: float,
        load: Callable[[], tuple[int, int]],
        serving: Callable[[], bool],
    ) -> None:
        self._producer, self._topic = producer, topic
        self._replica_id, self._model = replica_id, model
        self._interval_s = interval_s
        self._load, self._serving = load, serving
        self._ttfts: deque[float] = deque(maxlen=32)

    def observe(self, req: Request) -> None:
        """Remember a finished attempt's TTFT (ms)."""
        if req.first_token_at is not None:
            self._ttfts.append((req.first_token_at - req.consumed_at) * 1000)

    def beat_event(self, state: str | None = None) -> ReplicaHeartbeat:
        running, waiting = self._load()
        return ReplicaHeartbeat(
            replica_id=self._replica_id,
            model=self._model,
            state=state or ("serving" if self._serving() else "starting"),
            running=running,
            waiting=waiting,
            interval_ms=int(self._interval_s * 1000),
            ttft_ms=round(statistics.median(self._ttfts), 3) if self._ttfts else None,
        )

    async def send(self, state: str | None = None) -> None:
        event = self.beat_event(state)
        value, headers = encode(event)
        await self._producer.send_and_wait(
            self._topic, value, key=event.key.encode(), headers=headers
        )

    async def run(self) -> None:
        """Beat until cancelled; a failed send (a broker away) is retried at the next beat."""
        while True:
            try:
                async with asyncio.timeout(max(1.0, self._interval_s * 2)):
                    await self.send()
            except Exception as exc:
                log.warning("%s: heartbeat not sent: %r", self._replica_id, exc)
            await asyncio.sleep(self._interval_s)

    async def stopped(self) -> None:
        """The last beat of a clean stop: readers drop the replica at once."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self.send("stopped")
