"""The SSE response: a stream's frames written straight to the ASGI `send`.

Why not Starlette's StreamingResponse: this is the per-frame path of every live stream
(20,000 frames/s at 1,000 streams), and StreamingResponse adds a type check and a loop
level per frame and, under ASGI spec < 2.4 (uvicorn's), an anyio task group per response.
Same status, headers and bytes; a client that goes away is noticed the same way (a task
reads `receive` for `http.disconnect`) and stops the stream, whose generator then closes
(unsubscribing from the hub). The body goes through one `FrameWriter`, which the stream
may also hand to the hub for its live chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from query_api.frame_writer import FrameWriter

Frames = Callable[[FrameWriter], AsyncGenerator[bytes, None]]


class SseResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, frames: Frames, headers: Mapping[str, str]) -> None:
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
        writer = FrameWriter(send)
        frames = self._frames(writer)
        try:
            async for data in frames:
                await writer.write(data)
            await writer.flush()
        finally:
            await frames.aclose()  # unsubscribes: the hub writes no more
            writer.abandon()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
