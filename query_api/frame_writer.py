"""Writes one SSE response's frames: awaited by its stream, or at once by the hub.

Why: with one client per request, every live chunk woke one stream task just to pass one
pre-encoded frame to `send`; the wake-up, the generator chain and the assembler cost as
much as the rest of the server's work per event. While a stream is idle (caught up,
nothing in hand), the hub gives it the next in-order chunk directly and the frame is
written inside the hub's own call (`write_now`).

`send` is a coroutine function (ASGI), but the server's `send` of a body chunk only
suspends when the client's socket is backed up (flow control). So `write_now` runs it by
hand as far as it goes: almost always to its end; when it does suspend, a task finishes it
exactly as `await` would have, and every later frame waits for that task (`flush`), so
frames never overtake each other.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Coroutine, Generator
from typing import Any, cast

from starlette.types import Send

log = logging.getLogger(__name__)


class FrameWriter:
    """The body writes of one streaming response, in order."""

    __slots__ = ("_broken", "_finishing", "_send")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._finishing: asyncio.Task[None] | None = None  # a write_now that suspended
        self._broken = False

    def write_now(self, data: bytes) -> bool:
        """Write `data` without awaiting. False, with nothing written, while an earlier
        write is unfinished or after `send` failed: the caller queues it for `write`."""
        if self._broken:
            return False
        if self._finishing is not None:
            if not self._finishing.done():
                return False
            self._reap()
        # an ASGI server's `send` is an `async def`; were it not, `.send` fails below and
        # every frame takes the stream's awaited path
        send = cast(
            Coroutine[Any, Any, None],
            self._send({"type": "http.response.body", "body": data, "more_body": True}),
        )
        try:
            blocked_on = send.send(None)
        except StopIteration:
            return True
        except Exception as exc:  # the send refused before writing: the stream's own
            # `write` of the queued frame raises it again, where errors are handled
            log.debug("write_now failed: %r", exc)
            self._broken = True
            return False
        self._finishing = asyncio.ensure_future(_finish(send, blocked_on))
        return True

    async def write(self, data: bytes) -> None:
        """Write `data` after every earlier write (the stream's own path)."""
        await self.flush()
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def flush(self) -> None:
        """Until a write started by `write_now` has finished (its error raised here)."""
        if self._finishing is not None:
            finishing, self._finishing = self._finishing, None
            await finishing

    def abandon(self) -> None:
        """The response is over (client gone, or the stream ended): drop an unfinished
        write and refuse later ones."""
        self._broken = True
        finishing, self._finishing = self._finishing, None
        if finishing is None:
            return
        if not finishing.done():
            finishing.cancel()
        elif not finishing.cancelled():
            finishing.exception()  # retrieved: it is the client's loss, not an error here

    def _reap(self) -> None:
        """Forget a finished suspended write; after a failed one, refuse further writes."""
        finishing, self._finishing = self._finishing, None
        if finishing is not None and (finishing.cancelled() or finishing.exception()):
            self._broken = True


async def _finish(send: Coroutine[Any, Any, None], blocked_on: Any) -> None:
    await _resume(send, blocked_on)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], blocked_on: Any) -> Generator[Any, Any, None]:
    """Drive `coro`, started by hand and suspended on `blocked_on`, to its end, as the
    task that `await`s it would have: what it yields goes to the task, what the task sends
    or throws back goes to it."""
    while True:
        try:
            result = yield blocked_on
        except BaseException as exc:
            try:
                blocked_on = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                blocked_on = coro.send(result)
            except StopIteration:
                return
