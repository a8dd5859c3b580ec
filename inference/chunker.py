"""Coalesces a request's text into TokenChunks by time and size.

A request gets at most one chunk per `interval` unless `max_tokens` are pending: the first
text goes out at once (time to first token), later text waits at most one interval. On a
CPU a decode step is slower than the interval, so each step's text leaves at once; on a
GPU, several steps share one chunk and the event rate stays far below the token rate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkOut:
    seq: int
    text: str
    token_count: int


class Chunker:
    """Per request and attempt: `seq` counts from 0."""

    def __init__(self, interval_s: float, max_tokens: int) -> None:
        self._interval = interval_s
        self._max_tokens = max_tokens
        self._text = ""
        self._tokens = 0
        self._last_flush: float | None = None
        self._seq = 0

    def fresh(self) -> Chunker:
        """An empty chunker with the same limits (a new attempt counts from seq 0)."""
        return Chunker(self._interval, self._max_tokens)

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
        return self._last_flush + self._interval

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
