"""A small SSE reader for the e2e tests: what a browser's EventSource would see."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class SseEvent:
    event: str
    id: str | None
    data: Any


def events(
    client: httpx.Client, url: str, *, last_event_id: str | None = None
) -> Iterator[SseEvent]:
    """Yield the events of an SSE response until the server ends it (comments skipped)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", url, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        event, event_id, data = "message", None, list[str]()
        for line in resp.iter_lines():
            if line == "":
                if data:
                    yield SseEvent(event, event_id, json.loads("\n".join(data)))
                event, event_id, data = "message", None, []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    event = value
                elif field == "id":
                    event_id = value
                elif field == "data":
                    data.append(value)


def read_until_end(client: httpx.Client, url: str, **kw: Any) -> list[SseEvent]:
    """Every event up to and including the terminal one (done or error)."""
    out = []
    for ev in events(client, url, **kw):
        out.append(ev)
        if ev.event in ("done", "error"):
            break
    return out


def text_of(evs: list[SseEvent]) -> str:
    """The text a client shows: chunks of the latest attempt (a reset discards earlier ones)."""
    text = ""
    for ev in evs:
        if ev.event == "reset":
            text = ""
        elif ev.event == "chunk":
            text += ev.data["text"]
    return text


def eventually(check: Callable[[], Any], timeout_s: float = 30, interval_s: float = 0.2) -> Any:
    """Poll until `check` returns something truthy; its last value, or AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s}s (last: {value!r})")
        time.sleep(interval_s)
