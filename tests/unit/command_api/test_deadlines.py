"""The deadline keeper's book (command_api/deadlines.py): who is past a deadline, once."""

from __future__ import annotations

from datetime import UTC, datetime

from command_api.deadlines import DeadlineBook
from schemas import (
    ChatMessage,
    CompletionFinished,
    CompletionStarted,
    GenerationParams,
    PromptSubmitted,
    TokenChunk,
    Usage,
)

T0 = 1_000_000.0


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def prompt(rid: str, t: float = T0, model: str = "m") -> PromptSubmitted:
    return PromptSubmitted(
        request_id=rid,
        conversation_id=f"c-{rid}",
        user_id="u",
        model=model,
        messages=(ChatMessage("user", "hi"),),
        params=GenerationParams(max_tokens=8),
        occurred_at=at(t),
    )


def started(rid: str, t: float, attempt: int = 1) -> CompletionStarted:
    return CompletionStarted(
        request_id=rid,
        conversation_id=f"c-{rid}",
        attempt=attempt,
        replica_id="r",
        model="m",
        occurred_at=at(t),
    )


def ready(_: int) -> bool:
    return True


def book() -> DeadlineBook:
    return DeadlineBook(30, 120, grace_s=2, judged=lambda model: model == "m")


def test_a_prompt_never_started_times_out_once_past_deadline_and_grace() -> None:
    b = book()
    b.apply(prompt("a"), 0)
    assert b.due(T0 + 31, ready) == []  # within the grace a late start may still arrive
    (failed,) = b.due(T0 + 33, ready)
    assert (failed.request_id, failed.attempt, failed.error_code, failed.retryable) == (
        "a",
        1,
        "queue_timeout",
        True,
    )
    assert failed.event_id == b.due(T0 + 33, ready)[0].event_id  # stable: a rewrite is a duplicate
    b.apply(failed, 0)  # our own write read back
    assert b.due(T0 + 100, ready) == []
    b.apply(prompt("a"), 0)  # redelivered prompt: still final
    assert b.due(T0 + 100, ready) == []


def test_started_prompts_and_unjudged_models_and_unready_partitions_wait() -> None:
    b = book()
    b.apply(started("s", T0 + 1), 0)  # the start read before its prompt (other topic)
    b.apply(prompt("s"), 0)
    b.apply(prompt("x", model="never-seen"), 0)
    b.apply(prompt("p"), 5)
    assert [f.request_id for f in b.due(T0 + 60, lambda p: p != 5)] == []


def test_a_started_attempt_without_progress_stalls_and_a_finished_one_does_not() -> None:
    b = book()
    b.apply(prompt("s"), 0)
    b.apply(started("s", T0 + 1, attempt=2), 0)
    b.apply(
        TokenChunk(
            request_id="s",
            conversation_id="c-s",
            attempt=2,
            seq=0,
            text="x",
            token_count=1,
            occurred_at=at(T0 + 10),
        ),
        0,
    )
    assert b.due(T0 + 131, ready) == []
    (failed,) = b.due(T0 + 133, ready)
    assert (failed.error_code, failed.attempt) == ("stalled", 2)
    b.apply(prompt("f"), 0)
    b.apply(started("f", T0 + 1), 0)
    b.apply(
        CompletionFinished(
            request_id="f",
            conversation_id="c-f",
            attempt=1,
            finish_reason="stop",
            usage=Usage(1, 1),
        ),
        0,
    )
    assert [f.request_id for f in b.due(T0 + 1000, ready)] == ["s"]
