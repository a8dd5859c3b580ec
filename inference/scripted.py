"""A deterministic engine for tests and load tests: no model, a known reply at a set rate.

Tokens are UTF-8 bytes (id = byte value, 256 = end of sequence), so multi-byte
characters are split across tokens exactly as byte-level BPE can split them, and the
detokeniser is exercised for real. The reply is `Echo: <last message>` repeated
`repeat` times; one step takes 1/`token_rate` seconds for the whole batch, like a
memory-bound decode step. A prompt containing `fail_marker` makes the step fail, which
is how tests reach the engine-failure path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from inference.engine import (
    ContextLengthExceeded,
    EngineError,
    InvalidPrompt,
    PreparedPrompt,
    StepToken,
)
from schemas.events import ChatMessage, GenerationParams

EOS = 256


@dataclass
class _Seq:
    reply: bytes
    pos: int
    fail: bool


class ScriptedEngine:
    """See the module docstring; satisfies `inference.engine.Engine`."""

    def __init__(
        self,
        model_id: str = "scripted",
        *,
        token_rate: float = 200.0,
        repeat: int = 1,
        fail_marker: str = "[[engine-fail]]",
        max_context: int = 4096,
    ) -> None:
        self.model_id = model_id
        self._delay = 1.0 / token_rate if token_rate > 0 else 0.0
        self._repeat = repeat
        self._fail_marker = fail_marker
        self._max_context = max_context
        self._seqs: dict[str, _Seq] = {}
        self._lock = threading.Lock()

    def prepare(self, messages: Sequence[ChatMessage], params: GenerationParams) -> PreparedPrompt:
        if not messages:
            raise InvalidPrompt("a prompt needs at least one message")
        rendered = "".join(f"<{m.role}>{m.content}\n" for m in messages).encode()
        if len(rendered) >= self._max_context:
            raise ContextLengthExceeded(
                f"prompt is {len(rendered)} tokens; the context holds {self._max_context}"
            )
        max_new = min(params.max_tokens, self._max_context - len(rendered))
        return PreparedPrompt(tuple(rendered), max_new, params)

    def add(self, seq_id: str, prompt: PreparedPrompt) -> None:
        text = bytes(prompt.token_ids).decode(errors="replace")
        last = text.rstrip("\n").rsplit("\n", 1)[-1].split(">", 1)[-1]
        reply = (f"Echo: {last}" + (" " if self._repeat > 1 else "")) * self._repeat
        with self._lock:
            self._seqs[seq_id] = _Seq(reply.rstrip(" ").encode(), 0, self._fail_marker in text)

    def release(self, seq_id: str) -> None:
        with self._lock:
            self._seqs.pop(seq_id, None)

    def step(self) -> list[StepToken]:
        if self._delay:
            time.sleep(self._delay)
        with self._lock:
            if any(s.fail for s in self._seqs.values()):
                raise EngineError("scripted failure (fail marker in a prompt)")
            out: list[StepToken] = []
            for seq_id, s in self._seqs.items():
                if s.pos < len(s.reply):
                    out.append(StepToken(seq_id, s.reply[s.pos], False))
                else:
                    out.append(StepToken(seq_id, EOS, True))
                s.pos += 1
            return out

    def reset(self) -> None:
        with self._lock:
            self._seqs.clear()

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(t for t in token_ids if t < EOS).decode(errors="replace")

    def close(self) -> None:
        self.reset()
