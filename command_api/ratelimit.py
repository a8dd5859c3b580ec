"""Rate-limit arithmetic: a sliding window of accepted prompts per user, and its headers.

The decision itself is taken atomically in Postgres (`command.admit`, see `ddl.py`): under a
per-user advisory lock it counts the user's accepted prompts in the last window and their
running generations. This module turns what it returns into the verdict's HTTP headers.
A sliding log (not a token bucket) makes "60 per minute" exact: the 61st prompt inside
any 60 s is refused, whatever the alignment of the minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowState:
    """The user's window after the decision: `used` prompts, the oldest `oldest_age_s` ago."""

    limit: int  # 0 = unlimited
    window_s: float
    used: int
    oldest_age_s: float | None

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def reset_s(self) -> float:
        """Seconds until one more prompt fits (0 when one fits now)."""
        if self.limit <= 0 or self.used < self.limit or self.oldest_age_s is None:
            return 0.0
        return max(0.0, self.window_s - self.oldest_age_s)

    @property
    def exhausted(self) -> bool:
        return self.limit > 0 and self.used >= self.limit


def format_duration(seconds: float) -> str:
    """OpenAI's style for `x-ratelimit-reset-*`: `350ms`, `7s`, `1m0s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def retry_after(seconds: float) -> str:
    """`Retry-After` in whole seconds, never 0 (a client told 0 retries at once)."""
    return str(max(1, math.ceil(seconds)))


def headers(state: WindowState) -> dict[str, str]:
    """The `x-ratelimit-*-requests` headers (none when the limit is disabled)."""
    if state.limit <= 0:
        return {}
    # Until the oldest prompt leaves the window, not only when it is exhausted: that is when
    # `remaining` grows again, which is what OpenAI's reset header tells.
    reset = state.reset_s
    if not state.exhausted and state.oldest_age_s is not None:
        reset = max(0.0, state.window_s - state.oldest_age_s)
    return {
        "x-ratelimit-limit-requests": str(state.limit),
        "x-ratelimit-remaining-requests": str(state.remaining),
        "x-ratelimit-reset-requests": format_duration(reset),
    }
