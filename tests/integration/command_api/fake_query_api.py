"""A minimal stand-in for the query API's stream endpoint, faithful to the brief's SSE format.

It replays a scripted list of events for whatever request id is asked, honours
`Last-Event-ID`, records the Authorization headers it saw, and can drop the first
connection after a few events (to exercise resumption) or hold the stream open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def chunk(attempt: int, seq: int, text: str) -> tuple[str | None, str, dict[str, Any]]:
    data = {"attempt": attempt, "seq": seq, "text": text, "token_count": 1}
    return f"{attempt}:{seq}", "chunk", data


def reset(attempt: int) -> tuple[str | None, str, dict[str, Any]]:
    return None, "reset", {"attempt": attempt}


def done(
    attempt: int, finish_reason: str = "stop", prompt_tokens: int = 5, completion_tokens: int = 3
):
    data = {
        "attempt": attempt,
        "finish_reason": finish_reason,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "model": "SmolLM2-135M-Instruct",
        "ttft_ms": 12.5,
    }
    return f"{attempt}:done", "done", data


def error(code: str = "engine_error", message: str = "boom"):
    body = {"error": {"message": message, "type": "server_error", "code": code, "param": None}}
    return None, "error", body


@dataclass
class FakeQueryApi:
    script: list[tuple[str | None, str, dict[str, Any]]] = field(default_factory=list)
    owner_auth: str | None = None  # only this Authorization may stream (others get 404)
    drop_first_after: int | None = None
    hold_open: bool = False
    seen_auth: list[str] = field(default_factory=list)
    seen_last_ids: list[str | None] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    fail_with: tuple[int, str] | None = None  # answer every stream with (status, body)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions/{rid}/stream", self.stream)])

    async def stream(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        self.seen_auth.append(auth)
        if self.owner_auth is not None and auth != self.owner_auth:
            return Response(json.dumps({"error": {"message": "not found"}}), status_code=404)
        if self.fail_with is not None:
            return Response(self.fail_with[1], status_code=self.fail_with[0])
        rid = request.path_params["rid"]
        last = request.headers.get("last-event-id")
        self.seen_last_ids.append(last)
        self.connections += 1
        first_connection = self.connections == 1
        start = 0
        if last is not None:
            start = next(i for i, (eid, _, _) in enumerate(self.script) if eid == last) + 1

        async def body() -> AsyncIterator[str]:
            try:
                yield ": ping\n\n"
                for n, (eid, event, data) in enumerate(self.script[start:]):
                    if first_connection and self.drop_first_after == n:
                        return  # the link drops mid-stream
                    lines = [f"event: {event}"] + ([f"id: {eid}"] if eid else [])
                    lines.append("data: " + json.dumps({"request_id": rid, **data}))
                    yield "\n".join(lines) + "\n\n"
                while self.hold_open:
                    await asyncio.sleep(0.05)
                    yield ": ping\n\n"
            finally:
                self.closed.set()

        return StreamingResponse(body(), media_type="text/event-stream")


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on an ephemeral local port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
