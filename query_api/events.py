"""What the hub hands to streams: a compact, source-neutral view of completion events.

Hub events (from Kafka), Postgres rows and Kafka backfill records all become `StreamEvent`s,
so one assembler (`query_api.assembler`) orders and de-duplicates them whatever their source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["started", "chunk", "done", "error"]

# The seq of an attempt's whole stored text, streamed as its one chunk once its chunks
# expired from chat.completions (a rebuild after the retention keeps only the final
# text): above any real chunk's seq, so a client resuming from a real chunk of that
# attempt is told to start over (`reset`) and gets the whole text, and one resuming from
# this id gets only the end.
WHOLE_SEQ = 2**31 - 1


@dataclass(slots=True)
class StreamEvent:
    """One completion event of one request. Never changed once made (one instance is shared
    by the hub's buffer and every subscriber); not `frozen` only because a frozen
    dataclass's `__init__` costs ~3x as much, once per chunk on the hub's hot path.

    `anchored` says the source holds every chunk of this attempt before this event (a hub
    that saw the attempt begin, or Postgres, whose projection folds a partition in order);
    `first_seq` is the first chunk seq the hub saw of this attempt (None: none yet).
    """

    kind: Kind
    request_id: str
    attempt: int
    seq: int = -1
    text: str = ""
    token_count: int = 0
    data: dict[str, Any] = field(default_factory=dict)  # done/error payload
    occurred_at: float = 0.0  # epoch seconds when produced (delivery-lag metric)
    anchored: bool = True
    first_seq: int | None = None
    # a chunk's SSE frame, pre-encoded once by the hub for all its subscribers (b"": none)
    wire: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Position:
    """A client's resume point: after chunk (attempt, seq), or after the done event."""

    attempt: int
    seq: int
    done: bool = False

    @classmethod
    def parse(cls, raw: str | None) -> Position | None:
        """`<attempt>:<seq>` or `<attempt>:done`; None when absent, ValueError when garbage."""
        if raw is None or not raw.strip():
            return None
        attempt, sep, seq = raw.strip().partition(":")
        if not sep:
            raise ValueError(f"bad event id {raw!r}")
        if seq == "done":
            return cls(int(attempt), -1, done=True)
        position = cls(int(attempt), int(seq))
        if position.attempt < 0 or position.seq < 0:
            raise ValueError(f"bad event id {raw!r}")
        return position
