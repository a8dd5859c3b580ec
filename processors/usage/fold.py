"""The meter's fold: per request, its prompt's user/model/day and its highest attempt's final.

Pure and in memory, so the idempotency rules are unit-testable: a redelivered prompt or
final changes nothing, a lower attempt's final read after a higher one loses, and a final
read before its prompt (the two topics are read independently) waits in its row until the
prompt names the user. The totals are sums over these rows, so a request counts once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date

from schemas.events import CompletionFailed, CompletionFinished, Event, PromptSubmitted

EVENT_TYPES = frozenset(
    {PromptSubmitted.event_type, CompletionFinished.event_type, CompletionFailed.event_type}
)


@dataclass
class UsageRow:
    """One request's meter row (the columns of `chatlog.usage_requests`)."""

    request_id: str
    user_id: str | None = None
    model: str | None = None
    day: date | None = None
    attempt: int = 0
    outcome: str | None = None  # finished | cancelled | failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    dirty: bool = False


def fold_usage(rows: dict[str, UsageRow], events: list[Event]) -> dict[str, UsageRow]:
    """Apply `events` to `rows` (request_id -> row, created as needed); returns `rows`."""
    for e in events:
        if isinstance(e, PromptSubmitted):
            row = rows.setdefault(e.request_id, UsageRow(e.request_id))
            if row.user_id is None:  # the first prompt names it; a redelivered one is equal
                row.user_id, row.model = e.user_id, e.model
                row.day = e.occurred_at.astimezone(UTC).date()
                row.dirty = True
        elif isinstance(e, CompletionFinished | CompletionFailed):
            row = rows.setdefault(e.request_id, UsageRow(e.request_id))
            if e.attempt < row.attempt or (e.attempt == row.attempt and row.outcome):
                continue  # a lower attempt lost, or this attempt's final is a duplicate
            row.attempt, row.dirty = e.attempt, True
            if isinstance(e, CompletionFinished):
                row.outcome = "cancelled" if e.finish_reason == "cancelled" else "finished"
                row.prompt_tokens = e.usage.prompt_tokens
                row.completion_tokens = e.usage.completion_tokens
            else:  # a failed attempt generated nothing billable
                row.outcome, row.prompt_tokens, row.completion_tokens = "failed", 0, 0
    return rows
