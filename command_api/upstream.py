"""The query API's token stream over HTTP (SSE), resumed transparently on a dropped link.

The command API never imports the query API: it reads
`GET {query_api_url}/v1/chat/completions/{id}/stream` with the caller's own bearer key
(the stream is only served to the request's owner) and parses the SSE wire format of the
shared brief. A reconnect sends `Last-Event-ID`, so no chunk is lost or repeated.

When the link fails for good, the client is told only that it failed, with the request id;
what the query API answered (its body may carry a database's error text) or the transport
error goes to this service's log under that id.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from command_api.errors import UpstreamUnavailable

log = logging.getLogger(__name__)
TERMINAL_EVENTS = ("done", "error")


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: dict[str, Any]
    id: str | None = None


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[SseEvent]:
    """SSE lines -> events (comments and heartbeats skipped; data lines joined by `\\n`)."""
    event: str = "message"
    event_id: str | None = None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield SseEvent(event, json.loads("\n".join(data)), event_id)
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


RELAY_KEEPALIVE = 1024  # idle connections to the query API kept for the next relays


def relay_client(query_api_url: str) -> httpx.AsyncClient:
    """The client the relay reads the query API with.

    One connection per relayed stream, held for the whole generation: httpx's default pool
    (100 connections, 20 kept alive) queued the 101st concurrent stream until its pool
    timeout and reconnected every stream past the 20th (a TCP set-up on both sides, per
    prompt). The API's own admission bounds the streams, so the pool does not."""
    return httpx.AsyncClient(
        base_url=query_api_url,
        timeout=httpx.Timeout(10.0, read=120.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=RELAY_KEEPALIVE),
    )


class StreamSource:
    """Reads one request's event stream from the query API."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        max_reconnects: int = 5,
        not_found_grace_s: float = 5.0,
    ) -> None:
        self._http = http
        self._max_reconnects = max_reconnects
        # A request we just accepted may not be in the read model yet: the query API can
        # answer 404 for a moment. Only a 404 that outlives this grace is final.
        self._grace_s = not_found_grace_s

    @property
    def http(self) -> httpx.AsyncClient:
        """The client to the query API (the Responses routes read their objects with it)."""
        return self._http

    async def events(self, request_id: str, authorization: str) -> AsyncIterator[SseEvent]:
        """Events until `done` or `error`; raises UpstreamUnavailable when the link stays down."""
        last_id: str | None = None
        failures = 0
        loop = asyncio.get_running_loop()
        grace_until = loop.time() + self._grace_s
        while True:
            headers = {"Authorization": authorization, "Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                async with self._http.stream(
                    "GET", f"/v1/chat/completions/{request_id}/stream", headers=headers
                ) as resp:
                    if resp.status_code == 200:
                        async for ev in parse_sse(resp.aiter_lines()):
                            failures = 0
                            if ev.id:
                                last_id = ev.id
                            yield ev
                            if ev.event in TERMINAL_EVENTS:
                                return
                    elif resp.status_code != 404 or loop.time() > grace_until:
                        await resp.aread()
                        raise _failed(request_id, f"answered {resp.status_code}: {resp.text!r}")
            except (httpx.TransportError, json.JSONDecodeError) as exc:
                failures += 1
                if failures > self._max_reconnects:
                    raise _failed(request_id, f"unreachable: {exc!r}") from exc
            await asyncio.sleep(min(0.05 * 2**failures, 1.0))


def _failed(request_id: str, detail: str) -> UpstreamUnavailable:
    """The generic error for the client; the detail is logged under the request id."""
    log.warning("stream source failed for %s: %s", request_id, detail[:2000])
    return UpstreamUnavailable(
        f"The stream source failed for request {request_id} (details are in the log)."
    )
