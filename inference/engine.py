"""The engine interface: what the scheduler needs from a model, nothing more.

An engine owns a batch of sequences and advances all of them by one token per `step()`.
Between steps the scheduler may `add` sequences (they are prefilled at the start of the
next step and yield their first token in it) and `release` sequences (finished,
cancelled, or abandoned): that is iteration-level (continuous) batching. Engines never
see Kafka, chunks or text boundaries: they deal in token ids, and the scheduler turns ids
into text with `decode`, incrementally (see `detok.py`).

Threading: `step()` is called from a worker thread so the event loop keeps consuming
(cancels, new prompts) while the model computes; every other method is called from the
event loop. The scheduler only adds and releases between steps, but a rebalance may
release sequences while a step runs: implementations serialise `add`/`release`/`step`
(a lock), and a token of a sequence released meanwhile is simply ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.events import ChatMessage, GenerationParams


class EngineError(RuntimeError):
    """A failure of the model itself (OOM, device error): the batch fails, the replica lives.

    `code` is the CompletionFailed.error_code; `retryable` says whether the same prompt
    could succeed on another attempt.
    """

    code = "engine_error"
    retryable = True


class ContextLengthExceeded(EngineError):
    """The prompt alone fills the model's context window."""

    code = "context_length_exceeded"
    retryable = False


class InvalidPrompt(EngineError):
    """The prompt cannot be rendered (no messages, a role the chat template rejects)."""

    code = "invalid_prompt"
    retryable = False


@dataclass(frozen=True)
class PreparedPrompt:
    """A tokenised prompt and how many new tokens it may get (max_tokens, capped by context)."""

    token_ids: tuple[int, ...]
    max_new_tokens: int
    params: GenerationParams


@dataclass(frozen=True)
class StepToken:
    """One new token of one sequence; `eos` when the model ended the sequence with it."""

    seq_id: str
    token_id: int
    eos: bool


class Engine(Protocol):
    """A batch of sequences advanced one token at a time (see the module docstring).

    Implementations: `TransformersEngine` (a Hugging Face causal LM on CPU or CUDA) and
    `ScriptedEngine` (deterministic text at a fixed rate, for tests and load tests).
    """

    model_id: str

    def prepare(self, messages: Sequence[ChatMessage], params: GenerationParams) -> PreparedPrompt:
        """Render (chat template) and tokenise; raise ContextLengthExceeded/InvalidPrompt."""
        ...

    def add(self, seq_id: str, prompt: PreparedPrompt) -> None:
        """Join the batch at the next step (prefill, then one new token per step)."""
        ...

    def release(self, seq_id: str) -> None:
        """Leave the batch now; unknown ids are ignored."""
        ...

    def step(self) -> list[StepToken]:
        """Advance every sequence by one token. Raises EngineError; then call `reset()`."""
        ...

    def reset(self) -> None:
        """Drop every sequence (after a failed step) and free their memory."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of a run of token ids (special tokens skipped); may end in U+FFFD mid-char."""
        ...

    def close(self) -> None:
        """Free the model."""
        ...
