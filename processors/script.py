"""Scripted event sequences: one conversation's life, for tests and the benchmark.

Deterministic (ids and times derive from a seed), so a test can state the exact rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from schemas.events import (
    ChatMessage,
    CompletionFinished,
    CompletionStarted,
    ConversationDeleted,
    ConversationRenamed,
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


WORDS = [
    "the",
    "log",
    "is",
    "the",
    "truth",
    "and",
    "every",
    "table",
    "is",
    "a",
    "cache",
    "of",
    "it",
    "rebuilt",
    "at",
    "will",
]


def workload(
    conversations: int,
    *,
    requests_per_conversation: int = 2,
    chunks_per_request: int = 30,
    seed: int = 0,
) -> Iterator[Event]:
    """A realistic mix, mostly TokenChunk: every 7th request retried as attempt 2, every
    10th conversation renamed, every 25th deleted (and a late chunk after the delete)."""
    clock = Clock()
    n = 0
    for c in range(conversations):
        cid = f"conv-{seed}-{c}"
        for r in range(requests_per_conversation):
            n += 1
            rid = f"req-{seed}-{c}-{r}"
            answer = [f"{WORDS[(c + r + i) % len(WORDS)]} " for i in range(chunks_per_request)]
            if n % 7 == 0:
                yield from exchange(clock, conversation_id=cid, request_id=rid, user_id=f"u{c % 50}",
                                    prompt=f"question {c}.{r}", answer=answer[:3], finish=False)  # fmt: skip
                yield from exchange(clock, conversation_id=cid, request_id=rid, user_id="",
                                    prompt="", answer=answer, attempt=2, with_prompt=False)  # fmt: skip
            else:
                yield from exchange(clock, conversation_id=cid, request_id=rid, user_id=f"u{c % 50}",
                                    prompt=f"question {c}.{r}", answer=answer)  # fmt: skip
        if c % 10 == 0:
            yield ConversationRenamed(conversation_id=cid, user_id=f"u{c % 50}",
                                      title=f"title {c}", occurred_at=clock())  # fmt: skip
        if c % 25 == 0:
            yield ConversationDeleted(
                conversation_id=cid, user_id=f"u{c % 50}", occurred_at=clock()
            )
            yield TokenChunk(request_id=f"req-{seed}-{c}-0", conversation_id=cid, attempt=1,
                             seq=10_000, text="late", token_count=1, occurred_at=clock())  # fmt: skip
