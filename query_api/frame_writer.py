"""Writes one SSE response's frames: awaited by its stream, or by the hub without a wake-up.

Why: with one client per request, every live chunk woke one stream task just to pass one
pre-encoded frame to `send`; the wake-up, the generator chain and the assembler cost as
much as the rest of the server's work per event. While a stream is idle (caught up,
nothing in hand), the hub `offer`s it its next in-order chunks instead; the writer holds
them, and the hub writes every writer's held frames in one go after its batch (`write_held`):
one write per client per batch, as when the stream wrote them, also when the server is
behind and a batch holds several chunks of one request.

`send` is a coroutine function (ASGI), but the server's `send` of a body chunk only
suspends when the client's socket is backed up (flow control). So `write_held` runs it by
hand as far as it goes: almost always to its end; when it does suspend, a task finishes it
exactly as `await` would have, and no later frame is offered or written before that task
is done (`flush`), so frames never overtake each other.
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

    __slots__ = ("_broken", "_finishing", "_held", "_send")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._held: list[bytes] = []  # offered, not yet written
        self._finishing: asyncio.Task[None] | None = None  # a held write that suspended
        self._broken = False

    def offer(self, data: bytes, to_write: list[FrameWriter]) -> bool:
        """Hold `data` for `write_held`; the first held frame puts this writer on
        `to_write` (the hub's list of writers to write after its batch). False, with
        nothing held, while an earlier write is unfinished or after `send` failed: the
        caller then queues the frame for the stream's `write`."""
        if self._finishing is not None:
            if not self._finishing.done():
                return False
            self._reap()
        if self._broken:
            return False
        if not self._held:
            to_write.append(self)
        self._held.append(data)
        return True

    def write_held(self) -> None:
        """Write the held frames now, in one `send` run by hand (see the module's doc)."""
        if not self._held or self._broken or self._finishing is not None:
            return  # the stream's `write` takes them
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        # an ASGI server's `send` is an `async def`; were it not, `.send` fails below and
        # the stream's awaited `write` takes over
        send = cast(
            Coroutine[Any, Any, None],
            self._send({"type": "http.response.body", "body": data, "more_body": True}),
        )
        try:
            blocked_on = send.send(None)
        except StopIteration:
            self._held.clear()
            return
        except Exception as exc:  # refused before writing: kept for the stream's `write`,
            # which raises it again where the response's errors are handled
            log.debug("write_held failed: %r", exc)
            self._broken = True
            return
        self._held.clear()
        self._finishing = asyncio.ensure_future(_finish(send, blocked_on))

    async def write(self, data: bytes) -> None:
        """Write `data` after every earlier frame (the stream's own path)."""
        await self.flush()
        if self._held:
            data = b"".join((*self._held, data))
            self._held.clear()
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def flush(self) -> None:
        """Until a held write that suspended has finished (its error raised here)."""
        if self._finishing is not None:
            finishing, self._finishing = self._finishing, None
            await finishing

    def abandon(self) -> None:
        """The response is over (client gone, or the stream ended): drop an unfinished
        write and refuse later ones."""
        self._broken = True
        self._held.clear()
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
