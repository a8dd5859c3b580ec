"""Daily token quotas (`CHATLOG_TOKEN_QUOTA_PER_DAY`, per user, 0 = off).

The check reads the usage meter's read model (`chatlog.usage_requests`, written by the
`usage` projection): the user's prompt + completion tokens of requests prompted today
(UTC). It is a projection, so it trails the log: a request counts once its final has been
folded (about a second behind), and requests still generating count nothing yet. A user
under the quota may therefore start several prompts at once and end past it; the next
prompt after those finals are folded is refused, until the next UTC day.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from command_api.ratelimit import retry_after
from infra.http import ApiError


class QuotaExceeded(ApiError):
    """OpenAI's answer when the quota is spent: 429 `insufficient_quota`."""

    status, type, code = 429, "insufficient_quota", "insufficient_quota"


def next_day_s(now: datetime) -> float:
    """Seconds from `now` to the start of the next UTC day (when the quota resets)."""
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (start + timedelta(days=1) - now).total_seconds()


async def tokens_today(pool: AsyncConnectionPool[Any], user_id: str, now: datetime) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)"
            " FROM chatlog.usage_requests WHERE user_id = %s AND day = %s",
            (user_id, now.astimezone(UTC).date()),
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def check_token_quota(
    pool: AsyncConnectionPool[Any], user_id: str, quota: int, now: datetime | None = None
) -> None:
    """Raise QuotaExceeded when the user's metered tokens today reached `quota` (> 0)."""
    now = now or datetime.now(UTC)
    used = await tokens_today(pool, user_id, now)
    if used >= quota:
        raise QuotaExceeded(
            f"You exceeded your daily token quota ({used} of {quota} tokens used today, UTC);"
            " it resets at the start of the next UTC day.",
            headers={
                "Retry-After": retry_after(next_day_s(now)),
                "x-ratelimit-limit-tokens": str(quota),
                "x-ratelimit-remaining-tokens": "0",
            },
        )
