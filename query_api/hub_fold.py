"""The hub's per-request fold: completion events in, the stream events to fan out back.

Pure (no I/O, no asyncio, no clock: the caller passes `now`), like `processors.fold`, so
every rule is unit-tested without Kafka: the highest attempt wins, an attempt's chunks are
kept in order without duplicates, nothing after an attempt's end counts. The buffers are
bounded by count and by bytes besides their time to live; the least recently touched goes
first, and a request dropped from memory is served from Postgres like any finished one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from query_api.events import StreamEvent
from query_api.sse import chunk_frame
from schemas.events import CompletionFailed, CompletionFinished, CompletionStarted

# what one buffered chunk costs besides its text and frame (the event object, list slot)
CHUNK_OVERHEAD = 200
BUFFER_OVERHEAD = 400


@dataclass
class RequestBuffer:
    """What the hub saw of one request: the highest attempt's chunks, and its end."""

    request_id: str
    conversation_id: str
    partition: int
    first_offset: int  # the first offset the hub saw of this request: backfill stops there
    attempt: int = -1
    anchored: bool = False  # saw this attempt begin (CompletionStarted or chunk 0)
    first_seq: int | None = None
    model: str | None = None
    chunks: list[StreamEvent] = field(default_factory=list)
    terminal: StreamEvent | None = None
    touched: float = 0.0
    size: int = BUFFER_OVERHEAD  # bytes held, estimated


@dataclass(frozen=True)
class Snapshot:
    partition: int
    first_offset: int
    anchored: bool
    events: tuple[StreamEvent, ...]


class Fold:
    """Every buffered request, folded from the live end of chat.completions."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests, self.max_bytes = max_requests, max_bytes
        # least recently touched first: eviction takes from the front
        self.buffers: OrderedDict[str, RequestBuffer] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def _buffer_for(
        self,
        request_id: str,
        conversation_id: str,
        attempt: int,
        partition: int,
        offset: int,
        now: float,
    ) -> RequestBuffer | None:
        """The request's buffer, switched to `attempt` when that is newer; None when the
        event is stale (a superseded attempt, or a duplicate delivered after the end)."""
        buffers = self.buffers
        buf = buffers.get(request_id)
        if buf is None:
            buf = RequestBuffer(request_id, conversation_id, partition, offset)
            buffers[request_id] = buf
            self.bytes += buf.size
        else:
            buffers.move_to_end(request_id)
        buf.touched = now
        if attempt < buf.attempt:
            return None  # a superseded attempt: the highest wins
        if attempt > buf.attempt:
            self.bytes -= buf.size - BUFFER_OVERHEAD
            buf.size = BUFFER_OVERHEAD
            buf.attempt, buf.chunks, buf.terminal = attempt, [], None
            buf.anchored, buf.first_seq = False, None
        if buf.terminal is not None:
            return None  # duplicate delivery after the end
        return buf

    def chunk(
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
        now: float,
        encode: bool,
    ) -> StreamEvent | None:
        """A TokenChunk's fields into its buffer; the stream event (None: nothing new).
        `encode`: someone watches now, so the SSE frame is made once here for them all
        (unwatched: a later subscriber formats its snapshot itself)."""
        buf = self._buffer_for(request_id, conversation_id, attempt, partition, offset, now)
        if buf is None:
            return None
        chunks = buf.chunks
        if not chunks:
            buf.first_seq = seq
            buf.anchored = buf.anchored or seq == 0
        elif seq <= chunks[-1].seq:
            return None  # at-least-once duplicate (order within a partition holds)
        wire = chunk_frame(request_id, attempt, seq, text, token_count) if encode else b""
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
            wire=wire,
        )
        chunks.append(out)
        size = CHUNK_OVERHEAD + len(text) + len(wire)
        buf.size += size
        self.bytes += size
        return out

    def event(
        self,
        event: CompletionStarted | CompletionFinished | CompletionFailed,
        partition: int,
        offset: int,
        now: float,
        model_hint: str | None,
    ) -> StreamEvent | None:
        """A start or an end into its buffer; the stream event (None: stale).
        `model_hint`: the model the prompt asked for, when no CompletionStarted said."""
        buf = self._buffer_for(
            event.request_id, event.conversation_id, event.attempt, partition, offset, now
        )
        if buf is None:
            return None
        out = _to_stream_event(event, buf, model_hint)
        if out.kind in ("done", "error"):
            buf.terminal = out
        return out

    def snapshot(self, request_id: str) -> Snapshot | None:
        buf = self.buffers.get(request_id)
        if buf is None:
            return None
        events = tuple(buf.chunks) + ((buf.terminal,) if buf.terminal else ())
        return Snapshot(buf.partition, buf.first_offset, buf.anchored, events)

    def drop(self, request_id: str) -> bool:
        buf = self.buffers.pop(request_id, None)
        if buf is None:
            return False
        self.bytes -= buf.size
        return True

    def over_bounds(self) -> bool:
        return len(self.buffers) > self.max_requests or self.bytes > self.max_bytes

    def evict(self, keep: str | None = None) -> list[str]:
        """Drop the least recently touched buffers until within both bounds (never `keep`,
        the one just folded); the ids dropped."""
        dropped: list[str] = []
        while self.over_bounds() and len(self.buffers) > (1 if keep in self.buffers else 0):
            rid = next(iter(self.buffers))
            if rid == keep:
                self.buffers.move_to_end(rid)
                continue
            self.drop(rid)
            dropped.append(rid)
        self.evictions += len(dropped)
        return dropped

    def sweep(
        self, now: float, watched: Container[str], finished_ttl_s: float, idle_ttl_s: float
    ) -> list[str]:
        """Forget unwatched requests finished `finished_ttl_s` ago or silent `idle_ttl_s`."""
        stale = [
            rid
            for rid, b in self.buffers.items()
            if rid not in watched
            and now - b.touched > (finished_ttl_s if b.terminal else idle_ttl_s)
        ]
        for rid in stale:
            self.drop(rid)
        return stale

    def drop_conversation(self, conversation_id: str) -> list[str]:
        """Drop every buffer of a deleted conversation (rare: a scan); the ids dropped."""
        rids = [r for r, b in self.buffers.items() if b.conversation_id == conversation_id]
        for rid in rids:
            self.drop(rid)
        return rids


def status_of(snap: Snapshot) -> dict[str, Any]:
    """The status fields a snapshot implies (the hub's view of GET /v1/chat/completions;
    the text is the caller's: a snapshot that is not anchored lacks the first chunks)."""
    terminal = snap.events[-1] if snap.events and snap.events[-1].kind != "chunk" else None
    attempt = snap.events[0].attempt if snap.events else 0
    view: dict[str, Any] = {
        "status": "streaming",
        "attempt": attempt,
        "finish_reason": None,
        "usage": None,
        "error": None,
    }
    if terminal is not None and terminal.kind == "done":
        reason = terminal.data.get("finish_reason")
        view.update(
            status="cancelled" if reason == "cancelled" else "finished",
            finish_reason=reason,
            usage=terminal.data.get("usage"),
        )
    elif terminal is not None and terminal.kind == "error":
        error = terminal.data.get("error") or {}
        view.update(
            status="failed", error={"code": error.get("code"), "message": error.get("message")}
        )
    return view


def _to_stream_event(
    event: CompletionStarted | CompletionFinished | CompletionFailed,
    buf: RequestBuffer,
    model_hint: str | None,
) -> StreamEvent:
    at = event.occurred_at.timestamp()
    rid, attempt = event.request_id, event.attempt
    if isinstance(event, CompletionStarted):
        buf.model = event.model
        if not buf.chunks:
            buf.anchored = True
        return StreamEvent("started", rid, attempt, occurred_at=at, anchored=buf.anchored)
    if isinstance(event, CompletionFinished):
        data: dict[str, Any] = {
            "request_id": rid,
            "attempt": attempt,
            "finish_reason": event.finish_reason,
            "usage": {
                "prompt_tokens": event.usage.prompt_tokens,
                "completion_tokens": event.usage.completion_tokens,
            },
            "model": buf.model or model_hint,
            "ttft_ms": event.ttft_ms,
        }
        kind: Any = "done"
    else:
        data = {
            "error": {
                "message": event.message,
                "type": "server_error",
                "code": event.error_code,
                "param": None,
            }
        }
        kind = "error"
    return StreamEvent(
        kind,
        rid,
        attempt,
        data=data,
        occurred_at=at,
        anchored=buf.anchored,
        first_seq=buf.first_seq,
    )
