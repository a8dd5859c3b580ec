"""A small SSE reader for the e2e tests: what a browser's EventSource would see."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
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
        parser = SseParser()
        for line in resp.iter_lines():
            yield from parser.feed([line])


class SseParser:
    """Lines in, events out: one parser for the sync reader above and the async one below
    (the chaos run reads many streams at once)."""

    def __init__(self) -> None:
        self.event, self.data = "message", list[str]()
        self.id: str | None = None

    def feed(self, lines: Iterable[str]) -> Iterator[SseEvent]:
        for line in lines:
            if line == "":
                if self.data:
                    yield SseEvent(self.event, self.id, json.loads("\n".join(self.data)))
                self.event, self.id, self.data = "message", None, []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    self.event = value
                elif field == "id":
                    self.id = value
                elif field == "data":
                    self.data.append(value)


async def aevents(resp: httpx.Response) -> AsyncIterator[SseEvent]:
    """The events of an open async SSE response (status already checked by the caller)."""
    parser = SseParser()
    async for line in resp.aiter_lines():
        for ev in parser.feed([line]):
            yield ev


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
