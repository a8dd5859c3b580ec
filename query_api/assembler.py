"""Orders one request's events from several sources into the client's exact SSE sequence.

Sources overlap (a hub snapshot, Postgres rows, live events, a Kafka backfill), arrive in
any mix, and repeat (at-least-once). The assembler keeps the client's position
(attempt, next seq), drops what the client already has, switches attempts with a `reset`
(never mixing two attempts' text), and reports gaps the durable sources must fill first.
Pure and synchronous, so every ordering rule is unit-tested without services.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from query_api.events import WHOLE_SEQ, Position, StreamEvent


@dataclass(frozen=True, slots=True)
class Out:
    """One SSE event for the client: name, id (None: no id line), JSON data."""

    event: str
    id: str | None
    data: dict[str, Any]
    occurred_at: float = 0.0
    wire: bytes = field(default=b"", compare=False, repr=False)  # the frame, pre-encoded


@dataclass(frozen=True, slots=True)
class Gap:
    """Chunks [from_seq, until) of `attempt` are missing (until None: all up to the hub's)."""

    attempt: int
    from_seq: int
    until: int | None


class Assembler:
    """The client's position in one request's stream, and the rules to advance it."""

    def __init__(self, request_id: str, resume: Position | None = None) -> None:
        self.request_id = request_id
        self.attempt = resume.attempt if resume else -1
        self.next_seq = resume.seq + 1 if resume and not resume.done else 0
        self.has_content = resume is not None
        self.finished = bool(resume and resume.done)
        self.last_id: str | None = None
        if resume is not None:
            self.last_id = f"{resume.attempt}:{'done' if resume.done else resume.seq}"

    def gap(self, ev: StreamEvent) -> Gap | None:
        """The chunks that must be emitted before `ev` and that no source has given yet."""
        if self.finished or ev.attempt < self.attempt or ev.kind == "started":
            return None
        next_seq = self.next_seq if ev.attempt == self.attempt else 0
        if ev.kind == "chunk":
            if ev.seq == WHOLE_SEQ:
                return None  # the whole text: nothing comes before it
            return Gap(ev.attempt, next_seq, ev.seq) if ev.seq > next_seq else None
        # done/error: complete when its source saw every chunk before it
        if ev.anchored or ev.first_seq is not None:
            return None
        return Gap(ev.attempt, next_seq, None)

    def is_next_chunk(self, ev: StreamEvent) -> bool:
        """`ev` is exactly the chunk the client needs next, in its current attempt: the
        live case, which `advance` takes without building an `Out`."""
        return (
            ev.seq == self.next_seq
            and ev.attempt == self.attempt
            and ev.kind == "chunk"
            and not self.finished
        )

    def advance(self, ev: StreamEvent) -> None:
        """The client now has chunk `ev` (which `is_next_chunk`)."""
        self.next_seq += 1
        self.has_content = True
        self.last_id = f"{ev.attempt}:{ev.seq}"

    def accept(self, ev: StreamEvent) -> list[Out]:
        """The SSE events `ev` produces for this client (often none: a duplicate)."""
        if self.finished or ev.attempt < self.attempt:
            return []
        outs: list[Out] = []
        if ev.attempt > self.attempt:
            if self.has_content:
                outs.append(
                    Out("reset", None, {"request_id": self.request_id, "attempt": ev.attempt})
                )
            self.attempt, self.next_seq, self.has_content = ev.attempt, 0, False
        if ev.kind == "chunk":
            if ev.seq == WHOLE_SEQ:
                if self.next_seq > WHOLE_SEQ:
                    return outs  # the client has the whole text already
                if self.next_seq > 0:  # it holds some of this attempt's (expired) chunks
                    outs.append(
                        Out("reset", None, {"request_id": self.request_id, "attempt": ev.attempt})
                    )
                self.next_seq = WHOLE_SEQ
            elif ev.seq != self.next_seq:
                return outs  # already sent (or a gap the caller failed to fill)
            self.advance(ev)
            outs.append(
                Out(
                    "chunk",
                    self.last_id,
                    {
                        "request_id": self.request_id,
                        "attempt": ev.attempt,
                        "seq": ev.seq,
                        "text": ev.text,
                        "token_count": ev.token_count,
                    },
                    ev.occurred_at,
                    ev.wire,
                )
            )
        elif ev.kind == "done":
            self.finished = True
            outs.append(Out("done", f"{ev.attempt}:done", ev.data, ev.occurred_at))
        elif ev.kind == "error":
            self.finished = True
            outs.append(Out("error", None, ev.data, ev.occurred_at))
        return outs
