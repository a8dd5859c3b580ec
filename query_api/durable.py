"""The durable sources of a stream: Postgres read models, then a Kafka backfill.

`initial_events` is what a new subscriber reads besides the hub's snapshot; `fill` answers
an assembler `Gap`: it waits (bounded) for the projection to write the missing chunks, and
when the projection is slower than that, re-reads them from Kafka (see `backfill`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from psycopg_pool import AsyncConnectionPool

from query_api import backfill, views
from query_api.assembler import Gap
from query_api.events import WHOLE_SEQ, StreamEvent
from query_api.hub import Hub, Snapshot
from query_api.settings import QuerySettings


class StreamIncomplete(Exception):
    """No source could supply chunks the client must get before later ones."""


def _terminal_event(row: dict[str, Any]) -> StreamEvent | None:
    status, rid, attempt = row["status"], row["request_id"], row["attempt"]
    if status in ("finished", "cancelled"):
        usage = row["usage"] or {}
        data = {
            "request_id": rid,
            "attempt": attempt,
            "finish_reason": row["finish_reason"]
            or ("cancelled" if status == "cancelled" else "stop"),
            "usage": {
                "prompt_tokens": usage.get("prompt_tokens", 0),
                "completion_tokens": usage.get("completion_tokens", 0),
            },
            "model": row["model"],
            "ttft_ms": row["ttft_ms"],
        }
        return StreamEvent("done", rid, attempt, data=data)
    if status == "failed":
        error = row["error"] or {}
        data = {
            "error": {
                "message": error.get("message", "The completion failed."),
                "type": "server_error",
                "code": error.get("code", "failed"),
                "param": None,
            }
        }
        return StreamEvent("error", rid, attempt, data=data)
    return None


def _whole_text(row: dict[str, Any]) -> StreamEvent:
    """A finished answer whose chunks expired from the log (a rebuild after the
    chat.completions retention has no chunk rows, only the final event's text): its whole
    stored text as the attempt's one chunk, so the stream never answers it empty."""
    tokens = (row["usage"] or {}).get("completion_tokens") or row["tokens"] or 0
    return StreamEvent(
        "chunk", row["request_id"], row["attempt"], WHOLE_SEQ, row["content"], tokens
    )


class DurableSource:
    """Postgres first; Kafka when the projection lags behind what a client needs now."""

    def __init__(self, settings: QuerySettings, pool: AsyncConnectionPool[Any], hub: Hub) -> None:
        self._settings = settings
        self._pool = pool
        self._hub = hub

    async def state(self, request_id: str) -> tuple[dict[str, Any] | None, list[StreamEvent]]:
        """The completion row and its winning attempt's chunks (+ its end, when terminal)."""
        async with self._pool.connection() as conn:
            row = await views.completion(conn, request_id)
            if row is None:
                return None, []
            rows = await views.chunks(conn, request_id, row["attempt"], 0)
        events = [
            StreamEvent("chunk", request_id, r["attempt"], r["seq"], r["text"], r["token_count"])
            for r in rows
        ]
        terminal = _terminal_event(row)
        if not events and terminal is not None and row["content"]:
            events = [_whole_text(row)]
        return row, events + ([terminal] if terminal else [])

    async def initial_events(self, request_id: str, snap: Snapshot | None) -> list[StreamEvent]:
        """What a new subscriber replays before live events (ARCHITECTURE §7)."""
        if snap is not None and snap.anchored:
            return list(snap.events)  # the hub saw this attempt from its start
        row, pg_events = await self.state(request_id)
        hub_events = list(snap.events) if snap else []
        if row is None or not hub_events:
            return pg_events + hub_events
        hub_attempt = hub_events[0].attempt
        if row["attempt"] > hub_attempt:
            return pg_events
        if row["attempt"] < hub_attempt:
            return hub_events
        return pg_events + hub_events  # the assembler drops the overlap

    async def fill(self, request_id: str, gap: Gap) -> list[StreamEvent]:
        """Chunks [gap.from_seq, gap.until) of gap.attempt, or StreamIncomplete."""
        deadline = time.monotonic() + self._settings.projection_wait_s
        row: dict[str, Any] | None = None
        while True:
            async with self._pool.connection() as conn:
                row = await views.completion(conn, request_id)
                rows = await views.chunks(conn, request_id, gap.attempt, gap.from_seq)
            got = _contiguous(
                [
                    StreamEvent(
                        "chunk", request_id, gap.attempt, r["seq"], r["text"], r["token_count"]
                    )
                    for r in rows
                ],
                gap.from_seq,
            )
            if gap.until is not None and len(got) >= gap.until - gap.from_seq:
                return got[: gap.until - gap.from_seq]
            terminal = (
                row is not None
                and row["attempt"] == gap.attempt
                and row["status"] in views.TERMINAL
            )
            if gap.until is None and terminal:
                return got
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        return await self._from_kafka(request_id, gap, row)

    async def _from_kafka(
        self, request_id: str, gap: Gap, row: dict[str, Any] | None
    ) -> list[StreamEvent]:
        where = self._hub.position_of(request_id)
        if where is None:
            raise StreamIncomplete(f"no partition known for {request_id}")
        partition, first_offset = where
        began = (
            row["created_at"].timestamp()
            if row
            else self._hub.started_at - self._settings.backfill_lookback_s
        )
        async with self._hub.backfills.slot():
            chunks = await backfill.chunks_before(
                self._settings,
                request_id=request_id,
                attempt=gap.attempt,
                partition=partition,
                since_s=began - 60,
                end_offset=first_offset,
            )
        got = _contiguous([c for c in chunks if c.seq >= gap.from_seq], gap.from_seq)
        if gap.until is not None:
            if len(got) < gap.until - gap.from_seq:
                raise StreamIncomplete(f"chunks {gap} of {request_id} are in no source")
            return got[: gap.until - gap.from_seq]
        return got


def _contiguous(chunks: list[StreamEvent], from_seq: int) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    for c in sorted(chunks, key=lambda c: c.seq):
        if c.seq == from_seq + len(out):
            out.append(c)
        elif c.seq > from_seq + len(out):
            break
    return out
