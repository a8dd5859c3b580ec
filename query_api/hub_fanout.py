"""The hub's fan-out: each request's SSE subscribers, and delivery to them.

The hub never waits on a client: a subscriber is a bounded list it appends to; a client
that falls `maxsize` events behind is dropped and told to reconnect (its stream says so).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from query_api.events import StreamEvent
from query_api.frame_writer import FrameWriter


class Subscriber:
    """One SSE client of one request: a bounded buffer the hub never waits on.

    Lighter than an `asyncio.Queue` (no getter/putter deques, no per-get future): the hub
    appends and resolves at most one waiting future; the stream takes everything pending
    in one go. `wake()` also lets a timer (heartbeats, polls) rouse a waiting stream.
    `direct`, set by an idle stream, takes an event without queueing it or waking the
    stream (True: taken; its frame is then written by `FanOut.write_held`); it is only
    tried while nothing is queued, so no event overtakes another. `deleted`: the request's
    conversation was deleted; the stream ends with a 404-shaped error.
    """

    __slots__ = (
        "_waiter",
        "deleted",
        "direct",
        "maxsize",
        "overflowed",
        "pending",
        "request_id",
    )

    def __init__(self, request_id: str, maxsize: int) -> None:
        self.request_id = request_id
        self.maxsize = maxsize
        self.pending: list[StreamEvent] = []
        self.overflowed = False
        self.deleted = False
        self.direct: Callable[[StreamEvent], bool] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event: StreamEvent) -> bool:
        """Deliver or queue an event for the stream; False (nothing done) when the buffer
        is full."""
        if not self.pending and (direct := self.direct) is not None and direct(event):
            return True
        if len(self.pending) >= self.maxsize:
            return False
        self.pending.append(event)
        self.wake()
        return True

    def take(self) -> list[StreamEvent]:
        """Everything pending, oldest first (empty when nothing is)."""
        batch, self.pending = self.pending, []
        return batch

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something is pending, the subscriber was dropped, or `wake()` was called."""
        if self.pending or self.overflowed or self.deleted:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None


class FanOut:
    """request id -> its subscribers."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self.subscribers: dict[str, set[Subscriber]] = {}
        # writers holding live chunks offered during this batch (`Subscriber.direct`)
        self.held_writers: list[FrameWriter] = []
        self.overflows = 0

    def add(self, request_id: str) -> Subscriber:
        sub = Subscriber(request_id, self.queue_size)
        self.subscribers.setdefault(request_id, set()).add(sub)
        return sub

    def remove(self, sub: Subscriber) -> None:
        subs = self.subscribers.get(sub.request_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscribers[sub.request_id]

    def send(self, subs: set[Subscriber] | None, event: StreamEvent) -> None:
        """`event` to the request's subscribers (`subs`: the caller has looked them up)."""
        if not subs:
            return
        for sub in tuple(subs):
            if not sub.push(event):
                # never wait for a slow client: drop it; its stream tells it to reconnect
                sub.overflowed = True
                self.overflows += 1
                self.remove(sub)
                sub.wake()

    def close_deleted(self, request_ids: Iterable[str]) -> None:
        """End the streams of requests whose conversation was deleted."""
        for rid in request_ids:
            for sub in self.subscribers.pop(rid, ()):
                sub.deleted = True
                sub.wake()

    def write_held(self) -> None:
        """Write the frames this batch's live chunks left with idle streams' writers: one
        write per client per batch however many of its chunks the batch held."""
        writers = self.held_writers  # one list for the hub's life: streams keep a reference
        for writer in writers:
            writer.write_held()  # never offers: the list does not change meanwhile
        writers.clear()

    @property
    def count(self) -> int:
        return sum(len(s) for s in self.subscribers.values())
