"""The attempt rule every reader of a generation's stream applies: a higher attempt wins.

A generation retried after its replica died starts again as attempt + 1 (inference), and
its chunks replace the lower attempt's. The relays that turn the chatlog stream into
another wire format (the command API's OpenAI chunks, the query API's Responses events)
drop a lower attempt's stragglers and restart at a higher one; one rule for both.
"""

from __future__ import annotations

from typing import Literal

Verdict = Literal["current", "stale", "restart"]


def attempt_verdict(current: int | None, attempt: int | None) -> Verdict:
    """How a chunk of `attempt` relates to the attempt being relayed (None: not known yet)."""
    if current is None or attempt is None or attempt == current:
        return "current"
    return "stale" if attempt < current else "restart"
