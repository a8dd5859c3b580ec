"""The meter's fold: a request counts once, its highest attempt, whatever the read order."""

from __future__ import annotations

from datetime import UTC, date, datetime

from processors.usage.fold import UsageRow, fold_usage
from schemas.events import (
    ChatMessage,
    CompletionFailed,
    CompletionFinished,
    Event,
    GenerationParams,
    PromptSubmitted,
    Usage,
)

T = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)


def prompt(rid: str, user: str = "alice", model: str = "m1") -> PromptSubmitted:
    return PromptSubmitted(request_id=rid, conversation_id="c", user_id=user, model=model,
                           messages=(ChatMessage("user", "hi"),),
                           params=GenerationParams(max_tokens=8), occurred_at=T)  # fmt: skip


def done(rid: str, attempt: int, p: int, c: int, reason: str = "stop") -> CompletionFinished:
    return CompletionFinished(request_id=rid, conversation_id="c", attempt=attempt,
                              finish_reason=reason, usage=Usage(p, c))  # type: ignore[arg-type]  # fmt: skip


def failed(rid: str, attempt: int) -> CompletionFailed:
    return CompletionFailed(request_id=rid, conversation_id="c", attempt=attempt,
                            error_code="replica_lost", message="x", retryable=True)  # fmt: skip


def folded(events: list[Event]) -> dict[str, UsageRow]:
    rows: dict[str, UsageRow] = {}
    for e in events:  # one event per batch: the rows carry everything between batches
        fold_usage(rows, [e])
    return rows


def test_highest_attempt_counts_once_whatever_the_order() -> None:
    events: list[Event] = [done("r", 2, 5, 7), prompt("r"), failed("r", 1), done("r", 2, 5, 7),
                           prompt("r"), done("r", 1, 5, 3)]  # fmt: skip
    row = folded(events)["r"]
    assert (row.user_id, row.model, row.day) == ("alice", "m1", date(2026, 3, 1))
    assert (row.attempt, row.outcome, row.prompt_tokens, row.completion_tokens) == (
        2, "finished", 5, 7)  # fmt: skip


def test_a_retry_after_a_failure_wins_and_a_cancel_is_counted() -> None:
    rows = folded([prompt("a"), failed("a", 1), done("a", 2, 4, 4), prompt("b"),
                   done("b", 1, 3, 1, "cancelled"), prompt("f"), failed("f", 1)])  # fmt: skip
    assert rows["a"].outcome == "finished"
    assert (rows["b"].outcome, rows["b"].completion_tokens) == ("cancelled", 1)
    assert (rows["f"].outcome, rows["f"].prompt_tokens) == ("failed", 0)


def test_a_redelivered_event_leaves_the_row_clean() -> None:
    rows = folded([prompt("r"), done("r", 1, 2, 2)])
    rows["r"].dirty = False
    fold_usage(rows, [prompt("r"), done("r", 1, 2, 2)])
    assert not rows["r"].dirty
