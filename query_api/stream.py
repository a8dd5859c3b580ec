"""One SSE stream: register with the hub, catch up, then drain live events (ARCHITECTURE §7).

The generator yields ready-made SSE bytes; several events that are already queued leave in
one write, so a busy stream costs one socket write per hub batch rather than per event.
Given the response's `FrameWriter`, an idle stream lets the hub write its next in-order
chunk itself (`query_api.frame_writer` says why); anything else (a new attempt, a gap, the
end, a write still in flight) is queued and wakes the stream, as without one.

Every stream ends with `done` or `error` (the OpenAI error shape): a client too slow
(`slow_consumer`), a conversation deleted meanwhile (`not_found`), chunks no source has
(`stream_incomplete`), any source failing (`stream_failed`: Postgres, Kafka, a backfill
timeout; the detail goes to the log), or no event for `stream_idle_timeout_s`
(`stream_timeout`); each tells the client where to resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable

from query_api.assembler import Assembler, Out
from query_api.durable import DurableSource, StreamIncomplete
from query_api.events import Position, StreamEvent
from query_api.frame_writer import FrameWriter
from query_api.hub import Hub
from query_api.metrics import Metrics
from query_api.settings import QuerySettings
from query_api.sse import PING, error_frame, frame

log = logging.getLogger(__name__)


class StreamSession:
    """Serves one client's stream of one request."""

    def __init__(
        self,
        settings: QuerySettings,
        hub: Hub,
        durable: DurableSource,
        metrics: Metrics,
        request_id: str,
        resume: Position | None,
    ) -> None:
        self._settings, self._hub, self._durable, self._metrics = settings, hub, durable, metrics
        self._request_id = request_id
        self._asm = Assembler(request_id, resume)
        self._last_write = 0.0  # monotonic: the heartbeat is due heartbeat_s after it
        self._last_event = 0.0  # monotonic: the idle timeout runs from the last event
        self._deleted = False  # a poll found the request's conversation deleted

    async def events(self, writer: FrameWriter | None = None) -> AsyncGenerator[bytes, None]:
        """The SSE byte stream; ends after done/error (or at once if resumed after done).
        With `writer`, the hub writes in-order live chunks through it while the stream
        waits; the generator yields the rest, for the same writer to write.

        Catch-up and live delivery in ONE generator: every live frame of every stream
        passes each generator level once, so there is only one.
        """
        if self._asm.finished:
            return
        direct = self._direct(writer) if writer is not None else None
        sub, snap = self._hub.subscribe(self._request_id)
        s = self._settings
        # One timer per idle period (heartbeat, the Postgres poll of a request the hub
        # has nothing of, the idle timeout), re-armed only when it fires: not a timer per
        # awaited event.
        timer: asyncio.TimerHandle | None = None
        ticked = False

        def tick() -> None:
            nonlocal timer, ticked
            timer, ticked = None, True
            sub.wake()

        try:
            try:
                initial = await self._durable.initial_events(self._request_id, snap)
                data = await self._feed_all(initial)
            except StreamIncomplete as exc:
                yield self._incomplete(exc)
                return
            if data:
                yield data
            # Poll Postgres while idle only for a finish the hub may never see (a request
            # older than the hub, or one whose buffer it dropped); 1,000 queued clients
            # polling would starve the pool.
            polling = snap is None and not self._hub.saw_submitted(self._request_id)
            loop = asyncio.get_running_loop()
            self._last_write = self._last_event = time.monotonic()
            while not self._asm.finished:
                if sub.overflowed:
                    self._metrics.overflows.inc()
                    yield error_frame(
                        "Client too slow: reconnect with Last-Event-ID: "
                        f"{self._asm.last_id or ''} to resume.",
                        "slow_consumer",
                    )
                    return
                if sub.deleted or self._deleted:
                    yield error_frame(
                        f"No completion {self._request_id!r}: its conversation was deleted.",
                        "not_found",
                        "invalid_request_error",
                    )
                    return
                batch = sub.take()
                if not batch:
                    if timer is None:
                        now = time.monotonic()
                        due = min(
                            self._last_write + s.heartbeat_s,
                            self._last_event + s.stream_idle_timeout_s,
                        )
                        wait = min(due - now, s.idle_poll_s) if polling else due - now
                        timer = loop.call_later(max(0.0, wait), tick)
                    sub.direct = None if polling else direct  # Postgres may know more
                    try:
                        await sub.wait()
                    finally:
                        sub.direct = None
                    batch = sub.take()
                    if not batch:
                        if not ticked:
                            continue  # woken by an overflow or a deletion: checked at the top
                        ticked = False
                        # the hub has nothing of this request yet: a finish it never saw
                        # (before it joined the log) reaches Postgres only, so re-check it
                        if polling:
                            batch.extend(await self._poll())
                            if self._deleted:
                                continue
                        now = time.monotonic()
                        if not batch and now - self._last_event >= s.stream_idle_timeout_s:
                            yield error_frame(
                                f"No event for {s.stream_idle_timeout_s:g} s; reconnect with "
                                f"Last-Event-ID: {self._asm.last_id or ''} to resume.",
                                "stream_timeout",
                            )
                            return
                        if not batch and now - self._last_write >= s.heartbeat_s:
                            self._last_write = now
                            yield PING
                        if not batch:
                            continue
                polling = polling and not any(e.occurred_at for e in batch)
                try:
                    data = await self._feed_all(batch)
                except StreamIncomplete as exc:
                    yield self._incomplete(exc)
                    return
                self._last_event = time.monotonic()
                if data:
                    self._last_write = self._last_event
                    yield data
        except Exception:  # psycopg, Kafka, timeouts: the client gets an error, not a reset
            log.exception("stream %s failed", self._request_id)
            yield error_frame(
                "The stream failed; reconnect with Last-Event-ID: "
                f"{self._asm.last_id or ''} to resume.",
                "stream_failed",
            )
        finally:
            if timer is not None:
                timer.cancel()
            self._hub.unsubscribe(sub)

    def _direct(self, writer: FrameWriter) -> Callable[[StreamEvent], bool]:
        """The hub's way to hand an idle stream's next chunk straight to its writer (see
        `Subscriber.direct`); the hub writes it after its batch."""
        asm, observe = self._asm, self._metrics.delivery_lag.observe
        held = self._hub.held_writers

        def deliver(ev: StreamEvent) -> bool:
            if not (ev.wire and asm.is_next_chunk(ev) and writer.offer(ev.wire, held)):
                return False  # queued for the stream instead
            asm.advance(ev)
            now = time.time()
            self._last_write = self._last_event = time.monotonic()
            if ev.occurred_at:
                observe(max(0.0, now - ev.occurred_at))
            return True

        return deliver

    async def _poll(self) -> list[StreamEvent]:
        """Postgres' events of the request; none when it cannot answer now (pool timeout,
        connection loss): the stream keeps waiting and polls again on its next tick."""
        try:
            row, events = await self._durable.state(self._request_id)
        except Exception as exc:  # psycopg/psycopg_pool raise several types
            log.debug("stream %s: poll failed: %r", self._request_id, exc)
            return []
        if row is not None and self._hub.conversation_deleted(row["conversation_id"]):
            self._deleted = True  # a request older than the hub: only its row says whose
            return []
        return events

    async def _feed_all(self, events: list[StreamEvent]) -> bytes:
        outs: list[Out] = []
        for ev in events:
            gap = self._asm.gap(ev)
            if gap is not None:
                self._metrics.backfills.inc()
                for filled in await self._durable.fill(self._request_id, gap):
                    outs += self._asm.accept(filled)
                if ev.kind == "chunk" and self._asm.gap(ev) is not None:
                    raise StreamIncomplete(f"gap {gap} not filled")
            outs += self._asm.accept(ev)
            if self._asm.finished:
                break
        now = time.time()
        observe = self._metrics.delivery_lag.observe
        for out in outs:
            if out.occurred_at:
                observe(max(0.0, now - out.occurred_at))
        return b"".join(frame(o) for o in outs)

    def _incomplete(self, exc: StreamIncomplete) -> bytes:
        log.warning("stream %s incomplete: %s", self._request_id, exc)
        return error_frame(
            "The stream could not be assembled; reconnect with Last-Event-ID: "
            f"{self._asm.last_id or ''}.",
            "stream_incomplete",
        )
