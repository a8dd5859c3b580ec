"""Coalesces a request's text into TokenChunks by time and size.

A request gets at most one chunk per interval unless `max_tokens` are pending: the first
text goes out at once (time to first token), later text waits at most one interval. On a
CPU a decode step is slower than the interval, so each step's text leaves at once; on a
GPU, several steps share one chunk and the event rate stays far below the token rate.

The interval is the replica's `Pace`, not a constant: every chunk event costs the same
CPU downstream (a Kafka record, a projection fold, a hub fan-out, an SSE frame) whatever
text it carries, so a replica with many requests running stretches the interval to keep
its chunk events per second within a budget. One user streams token by token; a hundred
get a few tokens per chunk: a replica's chunk events per second stay bounded as its
batch grows (docs/capacity.md counts what that bounds at the peak).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkOut:
    seq: int
    text: str
    token_count: int


class Pace:
    """The coalescing interval of a replica's requests: `base_s`, stretched (up to `max_s`)
    so that `running` requests emit at most about `events_per_s` chunks a second together.
    `events_per_s` 0 keeps the interval at `base_s`."""

    def __init__(self, base_s: float, events_per_s: float = 0.0, max_s: float = 0.0) -> None:
        self._base, self._budget, self._max = base_s, events_per_s, max(max_s, base_s)
        self.interval = base_s

    def update(self, running: int) -> None:
        """Called whenever the batch changes size."""
        wanted = running / self._budget if self._budget > 0 else 0.0
        self.interval = min(self._max, max(self._base, wanted))


class Chunker:
    """Per request and attempt: `seq` counts from 0."""

    def __init__(self, pace: Pace, max_tokens: int) -> None:
        self._pace = pace
        self._max_tokens = max_tokens
        self._text = ""
        self._tokens = 0
        self._last_flush: float | None = None
        self._seq = 0

    def fresh(self) -> Chunker:
        """An empty chunker with the same limits (a new attempt counts from seq 0)."""
        return Chunker(self._pace, self._max_tokens)

    @property
    def next_seq(self) -> int:
        return self._seq

    def add(self, text: str, tokens: int) -> None:
        self._text += text
        self._tokens += tokens

    def due_at(self) -> float | None:
        """When the pending text may leave (monotonic seconds); None if nothing to send."""
        if not self._text:
            return None
        if self._last_flush is None or self._tokens >= self._max_tokens:
            return 0.0
        return self._last_flush + self._pace.interval

    def take_due(self, now: float) -> ChunkOut | None:
        due = self.due_at()
        return self.take(now) if due is not None and due <= now else None

    def take(self, now: float) -> ChunkOut | None:
        """Whatever text is pending, regardless of time (end of a request)."""
        if not self._text:
            return None
        out = ChunkOut(self._seq, self._text, self._tokens)
        self._seq += 1
        self._text, self._tokens, self._last_flush = "", 0, now
        return out
