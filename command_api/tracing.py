"""W3C trace context: the caller's `traceparent` goes into the event, or a fresh one."""

from __future__ import annotations

import re
import secrets

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def traceparent_for(header: str | None) -> str:
    """The valid incoming traceparent unchanged, else a new sampled root (so every event
    can be traced downstream)."""
    if header:
        value = header.strip().lower()
        m = _TRACEPARENT.match(value)
        if m and value[:2] != "ff" and set(m.group(1)) != {"0"} and set(m.group(2)) != {"0"}:
            return value
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
