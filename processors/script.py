"""Scripted event sequences: one conversation's life, for tests and the benchmark.

Deterministic (ids and times derive from a seed), so a test can state the exact rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.events import (
    ChatMessage,
    CompletionFinished,
    CompletionStarted,
    Event,
    GenerationParams,
    PromptSubmitted,
    TokenChunk,
    Usage,
)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """A fake clock: each tick advances one millisecond."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def exchange(
    clock: Clock,
    *,
    conversation_id: str,
    request_id: str,
    user_id: str,
    prompt: str,
    answer: list[str],
    attempt: int = 1,
    model: str = "m",
    finish: bool = True,
    with_prompt: bool = True,
) -> list[Event]:
    """A prompt, its start, one chunk per piece of `answer`, and a finish."""
    events: list[Event] = []
    if with_prompt:
        events.append(
            PromptSubmitted(
                request_id=request_id,
                conversation_id=conversation_id,
                user_id=user_id,
                model=model,
                messages=(ChatMessage("user", prompt),),
                params=GenerationParams(max_tokens=64),
                occurred_at=clock(),
            )
        )
    events.append(
        CompletionStarted(
            request_id=request_id,
            conversation_id=conversation_id,
            attempt=attempt,
            replica_id="r1",
            model=model,
            occurred_at=clock(),
        )
    )
    events += [
        TokenChunk(
            request_id=request_id,
            conversation_id=conversation_id,
            attempt=attempt,
            seq=i,
            text=piece,
            token_count=1,
            occurred_at=clock(),
        )
        for i, piece in enumerate(answer)
    ]
    if finish:
        events.append(
            CompletionFinished(
                request_id=request_id,
                conversation_id=conversation_id,
                attempt=attempt,
                finish_reason="stop",
                usage=Usage(prompt_tokens=3, completion_tokens=len(answer)),
                ttft_ms=5.0,
                occurred_at=clock(),
            )
        )
    return events
