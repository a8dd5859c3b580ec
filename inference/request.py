"""One attempt at one prompt, as the scheduler tracks it from consumption to final event."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inference.chunker import Chunker
from inference.detok import IncrementalDetokenizer, StopMatcher
from inference.engine import PreparedPrompt
from schemas.events import CompletionFailed, CompletionFinished, PromptSubmitted


@dataclass(eq=False)  # identity: two attempts of one prompt are different requests
class Request:
    prompt: PromptSubmitted
    attempt: int
    partition: int
    offset: int
    prepared: PreparedPrompt | None
    detok: IncrementalDetokenizer
    stops: StopMatcher
    chunker: Chunker
    consumed_at: float = field(default_factory=time.monotonic)
    joined_at: float | None = None
    step_started_at: float | None = None  # the step that prefilled it
    first_token_at: float | None = None
    last_token_at: float | None = None
    completion_tokens: int = 0
    cancelled: bool = False
    done: bool = False  # left the batch (final emitted, aborted or abandoned)
    final_emitted: bool = False
    final: CompletionFinished | CompletionFailed | None = None
    answered: bool = False  # the final was emitted to chat.answers as well
    abandoned: bool = False  # its partition was revoked: the new owner decides
    streamed: list[str] = field(default_factory=list)  # the chunk texts sent, in order
    unacked: int = 0  # events emitted, not yet acknowledged or failed
    undelivered: BaseException | None = None  # the first event Kafka did not take
    delivery_failures: int = 0  # earlier attempts of this prompt lost to delivery

    def next_attempt(self) -> Request:
        """A fresh attempt (attempt + 1) of the same prompt, after an undelivered event."""
        return Request(
            prompt=self.prompt,
            attempt=self.attempt + 1,
            partition=self.partition,
            offset=self.offset,
            prepared=self.prepared,
            detok=self.detok.fresh(),
            stops=StopMatcher(self.prompt.params.stop),
            chunker=self.chunker.fresh(),
            cancelled=self.cancelled,
            delivery_failures=self.delivery_failures + 1,
        )

    @property
    def request_id(self) -> str:
        return self.prompt.request_id

    @property
    def seq_id(self) -> str:
        return f"{self.prompt.request_id}:{self.attempt}"

    @property
    def prompt_tokens(self) -> int:
        return len(self.prepared.token_ids) if self.prepared else 0

    @property
    def engine_first_token_s(self) -> float | None:
        """The engine's own time to the first token: the prefill step alone."""
        if self.first_token_at is None or self.step_started_at is None:
            return None
        return self.first_token_at - self.step_started_at
