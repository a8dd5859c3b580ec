"""FrameWriter: writes started by the hub never overtake each other or the stream's own."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from query_api.frame_writer import FrameWriter


class FlowControlledSend:
    """An ASGI send that, like uvicorn's, waits for the socket to drain while `paused`."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.drained = asyncio.Event()
        self.drained.set()
        self.fail: Exception | None = None

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if not self.drained.is_set():
            await self.drained.wait()
        if self.fail is not None:
            raise self.fail
        if message["type"] == "http.response.body":
            self.bodies.append(message["body"])


async def test_a_send_that_does_not_wait_is_written_within_the_call() -> None:
    send = FlowControlledSend()
    writer = FrameWriter(send)
    assert writer.write_now(b"a") and writer.write_now(b"b")
    assert send.bodies == [b"a", b"b"]  # no await in between: written synchronously
    await writer.write(b"c")
    assert send.bodies == [b"a", b"b", b"c"]


async def test_a_paused_write_finishes_later_and_nothing_overtakes_it() -> None:
    send = FlowControlledSend()
    writer = FrameWriter(send)
    send.drained.clear()
    assert writer.write_now(b"1")  # accepted: finished by a task once drained
    assert not writer.write_now(b"2")  # refused while 1 is in flight: the caller queues it
    later = asyncio.ensure_future(writer.write(b"2"))
    await asyncio.sleep(0.01)
    assert send.bodies == [] and not later.done()
    send.drained.set()
    await asyncio.wait_for(later, 1)
    assert send.bodies == [b"1", b"2"]
    assert writer.write_now(b"3") and send.bodies[-1] == b"3"


async def test_a_failing_send_refuses_direct_writes_and_fails_the_streams_own() -> None:
    send = FlowControlledSend()
    writer = FrameWriter(send)
    send.fail = RuntimeError("response already completed")
    assert not writer.write_now(b"x")
    assert not writer.write_now(b"y")  # stays refused
    with pytest.raises(RuntimeError, match="already completed"):
        await writer.write(b"x")


async def test_a_paused_write_that_fails_surfaces_in_flush() -> None:
    send = FlowControlledSend()
    writer = FrameWriter(send)
    send.drained.clear()
    assert writer.write_now(b"1")
    send.fail = ConnectionResetError("gone")
    send.drained.set()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(writer.flush(), 1)


async def test_abandon_drops_an_unfinished_write() -> None:
    send = FlowControlledSend()
    writer = FrameWriter(send)
    send.drained.clear()
    assert writer.write_now(b"1")
    writer.abandon()
    send.drained.set()
    await asyncio.sleep(0.01)
    assert send.bodies == [] and not writer.write_now(b"2")
