"""Group commit: calls that arrive while earlier ones are in flight share one round trip.

At low load a call runs at once, alone (no timer, no added latency). Under load, at most
`concurrency` batches are in flight; calls that arrive meanwhile queue and go together in
the next batch (up to `max_batch`). That turns N round trips, N commits and N pool
checkouts into one each, which is what bounded the accept path on a loaded machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Runs `run_batch(items) -> results` (same order, same length) for queued calls.

    A batch that raises is retried item by item, so one bad item fails only its own call
    (`run_batch` must be all-or-nothing, e.g. one transaction, for that to be safe).
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_batch: int = 64,
        concurrency: int = 4,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max(1, max_batch)
        self._concurrency = max(1, concurrency)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flushers: set[asyncio.Task[None]] = set()  # strong references only
        self._active = 0  # flushers in their loop (a done-callback count would lag)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._active < self._concurrency:
            self._active += 1
            task = asyncio.create_task(self._flush())
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        # Not shielded on purpose: a cancelled caller behaves as a cancelled query would
        # (it may or may not have been applied); its batch goes on for the others.
        return await future

    async def _flush(self) -> None:
        """Takes whatever is queued, runs it, repeats until the queue is empty.

        The count drops in the same step as the last emptiness check (no await between),
        so a call queued after it always starts a new flusher: none is ever stranded.
        """
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                live = [(item, f) for item, f in batch if not f.cancelled()]
                if live:
                    await self._run(live)
        finally:
            self._active -= 1

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            await self._run_settling(batch)
        except BaseException:  # cancelled (shutdown): no caller may wait forever
            for _, future in batch:
                if not future.done():
                    future.cancel()
            raise

    async def _run_settling(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc=exc)
                return
            for item, future in batch:  # isolate the failing item(s)
                try:
                    (result,) = await self._run_batch([item])
                except Exception as one_exc:
                    _settle(future, exc=one_exc)
                else:
                    _settle(future, result)
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)


def _settle(
    future: asyncio.Future[R], result: R | None = None, *, exc: Exception | None = None
) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]
