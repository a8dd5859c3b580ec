"""The SSE response: a stream's frames written straight to the ASGI `send`.

Why not Starlette's StreamingResponse: this is the per-frame path of every live stream
(20,000 frames/s at 1,000 streams), and StreamingResponse adds a type check and a loop
level per frame and, under ASGI spec < 2.4 (uvicorn's), an anyio task group per response.
Same status, headers and bytes; a client that goes away is noticed the same way (a task
reads `receive` for `http.disconnect`) and stops the stream, whose generator then closes
(unsubscribing from the hub).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class SseResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, frames: AsyncGenerator[bytes, None], headers: Mapping[str, str]) -> None:
        self._frames = frames
        self.status_code = 200
        self.background = None
        self.init_headers(headers)  # no content-length: the body is chunked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self._stream(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((stream, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(stream, gone, return_exceptions=True)
        if not stream.cancelled() and (exc := stream.exception()) is not None:
            raise exc

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async for data in self._frames:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            await self._frames.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
