"""FrameWriter: frames written by the hub never overtake each other or the stream's own."""

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


def offer(writer: FrameWriter, *frames: bytes) -> bool:
    """Offer frames as the hub does during a batch, then write them as it does after."""
    to_write: list[FrameWriter] = []
    taken = all(writer.offer(f, to_write) for f in frames)
    assert to_write == ([writer] if taken else [])
    for w in to_write:
        w.write_held()
    return taken


async def test_held_frames_leave_in_one_write_within_the_call() -> None:
    send = FlowControlledSend()
    writer = FrameWriter(send)
    assert offer(writer, b"a", b"b")
    assert send.bodies == [b"ab"]  # no await in between: written synchronously, together
    await writer.write(b"c")
    assert send.bodies == [b"ab", b"c"]


async def test_a_paused_write_finishes_later_and_nothing_overtakes_it() -> None:
    send = FlowControlledSend()
    writer = FrameWriter(send)
    send.drained.clear()
    assert offer(writer, b"1")  # taken: a task finishes the write once drained
    assert not offer(writer, b"2")  # refused while 1 is in flight: the caller queues it
    later = asyncio.ensure_future(writer.write(b"2"))
    await asyncio.sleep(0.01)
    assert send.bodies == [] and not later.done()
    send.drained.set()
    await asyncio.wait_for(later, 1)
    assert send.bodies == [b"1", b"2"]
    assert offer(writer, b"3") and send.bodies[-1] == b"3"


async def test_the_streams_own_write_takes_frames_still_held() -> None:
    send = FlowControlledSend()
    writer = FrameWriter(send)
    assert writer.offer(b"1", [])  # held; the hub has not written it yet
    await writer.write(b"2")
    assert send.bodies == [b"12"]


async def test_a_failing_send_refuses_offers_and_fails_the_streams_own_write() -> None:
    send = FlowControlledSend()
    writer = FrameWriter(send)
    send.fail = RuntimeError("response already completed")
    assert offer(writer, b"x")  # taken, but its write is refused: kept for the stream
    assert not offer(writer, b"y")  # no more taken
    with pytest.raises(RuntimeError, match="already completed"):
        await writer.write(b"y")


@pytest.mark.parametrize("hub_first", [True, False])
async def test_a_paused_write_that_fails_fails_the_stream(hub_first: bool) -> None:
    """Whoever comes next after the failure sees it: the hub's next offer is refused and
    the stream's own write fails, or the stream's flush raises it."""
    send = FlowControlledSend()
    writer = FrameWriter(send)
    send.drained.clear()
    assert offer(writer, b"1")
    send.fail = ConnectionResetError("gone")
    send.drained.set()
    if hub_first:
        await asyncio.sleep(0.01)
        assert not offer(writer, b"2")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(writer.write(b"2") if hub_first else writer.flush(), 1)


async def test_abandon_drops_an_unfinished_write() -> None:
    send = FlowControlledSend()
    writer = FrameWriter(send)
    send.drained.clear()
    assert offer(writer, b"1")
    writer.abandon()
    send.drained.set()
    await asyncio.sleep(0.01)
    assert send.bodies == [] and not offer(writer, b"2")
