"""Token ids -> text, incrementally, never emitting half a character or a half-decoded word.

Byte-level BPE tokens can end inside a UTF-8 character, and some tokenizers decode a
token differently depending on its neighbours (leading-space markers). So a token's text
is taken as the difference between decoding a short window with and without it
(the approach vLLM uses), and held back while the window ends in U+FFFD (an incomplete
character). Text leaves it storable everywhere: Postgres text cannot hold U+0000, so a
generated NUL becomes U+FFFD here, before chunking (the stream and the history then hold
the same text), and a lone surrogate (which no UTF-8 decoder returns, but a decode
function could) becomes U+FFFD too rather than failing the event's encoding later.
Stop strings are matched over the text, across token and chunk boundaries;
text that might be the start of a stop string is held until it is known not to be.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with U+0000 and lone surrogates replaced by U+FFFD (same length)."""
    return _UNSTORABLE.sub(REPLACEMENT, text)


class IncrementalDetokenizer:
    """Feeds token ids one at a time; returns the text each one completes (maybe '')."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # window start: tokens before it are emitted and context-free
        self._read = 0  # tokens before it are emitted

    def fresh(self) -> IncrementalDetokenizer:
        """A detokenizer with the same decode function and no tokens yet."""
        return IncrementalDetokenizer(self._decode)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        emitted = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) > len(emitted) and not text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return storable(text[len(emitted) :])
        return ""

    def flush(self) -> str:
        """The held tail at the end of a sequence, minus any incomplete character."""
        emitted = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return storable(text[len(emitted) :].rstrip(REPLACEMENT))


class StopMatcher:
    """Cuts the text at the first stop string; holds back a tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now; sets `stopped` when a stop string completed."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        held = self._held + text
        hits = [i for i in (held.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped, self._held = True, ""
            return held[: min(hits)]
        keep = self._longest_stop_prefix_suffix(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """At the end (length/EOS), what was held is plain text after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
