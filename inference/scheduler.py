"""The decode loop: admits requests into the engine's batch, steps it, turns tokens into
chunks and final events. Iteration-level batching: between two steps, finished and
cancelled requests leave and waiting ones join, up to `max_batch`.

All state lives on the event loop; only `engine.step()` runs in a thread, so cancels and
new prompts are taken while the model computes, and a cancel takes effect when the
current step returns (within one decode step).

Every event of an attempt must be acknowledged by Kafka before the request counts as
done (`on_done`: the ledger marks it final and its offset may be committed). If one is
not (a chunk, CompletionStarted, or the final on either topic), the attempt is lost: it
stops generating and the prompt runs again as attempt + 1 after a backoff, from seq 0,
so no client and no projection is left with a truncated answer that claims to be
finished. Once every event of an attempt is on chat.completions, its final event goes to
chat.answers too (so that topic holds only whole attempts), and its acknowledgement
there is what makes the request done. After `delivery_retries` lost attempts the next one does not generate: it ends
at once with a retryable CompletionFailed (`delivery_failed`), retried the same way
until Kafka takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from inference.chunker import Pace
from inference.engine import Engine, EngineError, StepToken
from inference.metrics import WorkerMetrics
from inference.publisher import EventSink
from inference.request import Request
from schemas.events import (
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    Event,
    FinishReason,
    PromptSubmitted,
    TokenChunk,
    Usage,
)

log = logging.getLogger(__name__)

Done = Callable[[Request], None]


class DeliveryFailed(EngineError):
    """Kafka did not acknowledge the events of several attempts in a row."""

    code = "delivery_failed"
    retryable = True


class Scheduler:
    """Owns the waiting queue, the running batch and the engine; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        publisher: EventSink,
        metrics: WorkerMetrics,
        *,
        replica_id: str,
        max_batch: int,
        on_done: Done,
        observer: Done | None = None,
        delivery_retries: int = 3,
        retry_backoff_s: float = 0.5,
        expired: Callable[[PromptSubmitted, int], bool] | None = None,
        pace: Pace | None = None,
    ) -> None:
        self.engine = engine
        self._pub = publisher
        self._metrics = metrics
        self._replica_id = replica_id
        self._max_batch = max_batch
        self._on_done = on_done  # called once every event of the attempt is acknowledged
        self._observer = observer
        self._delivery_retries = delivery_retries
        self._retry_backoff_s = retry_backoff_s
        # A waiting first attempt past its queue deadline is dropped, not started (#14)
        self._expired = expired
        self._pace = pace  # the requests' chunkers read its interval; the batch size sets it
        self._reruns: set[asyncio.TimerHandle] = set()
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}
        self.by_request: dict[str, Request] = {}
        self._wake = asyncio.Event()
        self._flush_wake = asyncio.Event()

    # -- called by the consumer ---------------------------------------------------------
    def submit(self, req: Request) -> None:
        self.by_request[req.request_id] = req
        if req.prepared is None:  # rejected by engine.prepare: the caller already failed it
            return
        self.waiting.append(req)
        self._gauges()
        self._wake.set()

    def cancel(self, request_id: str) -> bool:
        """Cancel a waiting request now, a running one after the current step."""
        req = self.by_request.get(request_id)
        if req is None:
            return False
        if req.done:
            req.cancelled = True  # an attempt lost to delivery runs again: cancelled
            return False
        req.cancelled = True
        if req in self.waiting:
            self.waiting.remove(req)
            self._started(req)
            self.finish(req, "cancelled")
        self._wake.set()
        return True

    def abandon(self, partitions: set[int]) -> None:
        """Partitions were revoked: drop their requests silently; the new owner retries."""
        for req in [r for r in self.by_request.values() if r.partition in partitions]:
            req.done = req.abandoned = True
            if req in self.waiting:
                self.waiting.remove(req)
            if self.running.pop(req.seq_id, None) is not None:
                self.engine.release(req.seq_id)
            self.by_request.pop(req.request_id, None)
        self._gauges()

    def fail(self, req: Request, error: EngineError) -> None:
        """End a request with CompletionFailed (CompletionStarted first if not yet sent)."""
        if req.joined_at is None:
            self._started(req)
        self._flush(req, time.monotonic())
        self._final(
            req,
            CompletionFailed(
                request_id=req.request_id,
                conversation_id=req.prompt.conversation_id,
                attempt=req.attempt,
                error_code=error.code,
                message=str(error)[:1000],
                retryable=error.retryable,
            ),
        )
        self._metrics.failure(error.code)

    def close(self) -> None:
        """Forget the attempts waiting for their backoff (the worker stops)."""
        for handle in self._reruns:
            handle.cancel()
        self._reruns.clear()

    @property
    def load(self) -> int:
        return len(self.waiting) + len(self.running)

    # -- the loops ----------------------------------------------------------------------
    async def run(self) -> None:
        """Forever: admit, step, publish."""
        while True:
            self._admit()
            if not self.running:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._pub.room()  # backpressure: Kafka is behind, do not outrun it
            if not self.running:
                continue
            started = time.monotonic()
            for req in self.running.values():
                if req.step_started_at is None:
                    req.step_started_at = started
            try:
                tokens = await asyncio.to_thread(self.engine.step)
            except EngineError as exc:
                log.warning("engine step failed: %s", exc)
                for req in list(self.running.values()):
                    self.fail(req, exc)
                self.engine.reset()
                continue
            self._absorb(tokens)

    async def run_flusher(self) -> None:
        """Sends chunks whose coalescing interval ran out between two steps."""
        while True:
            now = time.monotonic()
            dues = [d for r in self.running.values() if (d := r.chunker.due_at()) is not None]
            if dues and min(dues) <= now:
                for req in list(self.running.values()):
                    self._flush_due(req, now)
                continue
            self._flush_wake.clear()
            timeout = max(0.0, min(dues) - now) if dues else None
            # asyncio.timeout, not wait_for: on 3.11 a cancel that lands as the wake is set
            # is swallowed by wait_for, and this loop then waits forever (a stop hangs)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._flush_wake.wait()

    # -- internals ----------------------------------------------------------------------
    def _admit(self) -> None:
        now = time.monotonic()
        while self.waiting and len(self.running) < self._max_batch:
            req = self.waiting.popleft()
            assert req.prepared is not None
            if self._expired is not None and self._expired(req.prompt, req.attempt):
                self.by_request.pop(req.request_id, None)
                self._on_done(req)  # nothing of it was emitted; the deadline keeper ends it
                continue
            req.joined_at = now
            self._metrics.queue_time.observe(now - req.consumed_at)
            self._metrics.prompt_tokens.inc(req.prompt_tokens)
            self._started(req)
            self.engine.add(req.seq_id, req.prepared)
            self.running[req.seq_id] = req
        self._gauges()

    def _absorb(self, tokens: list[StepToken]) -> None:
        now = time.monotonic()
        for tok in tokens:
            req = self.running.get(tok.seq_id)
            if req is None or req.cancelled:
                continue
            self._token_times(req, now)
            req.completion_tokens += 1
            self._metrics.generation_tokens.inc()
            if not tok.eos:
                req.chunker.add(req.stops.feed(req.detok.push(tok.token_id)), 1)
            assert req.prepared is not None
            if tok.eos or req.stops.stopped:
                self.finish(req, "stop")
            elif req.completion_tokens >= req.prepared.max_new_tokens:
                self.finish(req, "length")
            else:
                self._flush_due(req, now)
        for req in [r for r in self.running.values() if r.cancelled]:
            self.finish(req, "cancelled")
        self._flush_wake.set()

    def _token_times(self, req: Request, now: float) -> None:
        if req.first_token_at is None:
            req.first_token_at = now
            self._metrics.ttft.observe(now - req.consumed_at)
        elif req.last_token_at is not None:
            self._metrics.itl.observe(now - req.last_token_at)
        req.last_token_at = now

    def finish(self, req: Request, reason: FinishReason) -> None:
        """Flush what is pending, send CompletionFinished, leave the batch."""
        if reason != "cancelled":
            req.chunker.add(req.stops.feed(req.detok.flush()) + req.stops.flush(), 0)
        self._flush(req, time.monotonic())
        ttft = None
        if req.first_token_at is not None:
            ttft = round((req.first_token_at - req.consumed_at) * 1000, 3)
        self._final(
            req,
            CompletionFinished(
                request_id=req.request_id,
                conversation_id=req.prompt.conversation_id,
                attempt=req.attempt,
                finish_reason=reason,
                usage=Usage(req.prompt_tokens, req.completion_tokens),
                ttft_ms=ttft,
                text="".join(req.streamed),
            ),
        )
        self._metrics.success(reason)

    def _final(self, req: Request, event: CompletionFinished | CompletionFailed) -> None:
        req.done = req.final_emitted = True
        req.final = event
        if self.running.pop(req.seq_id, None) is not None:
            self.engine.release(req.seq_id)
        self._metrics.e2e.observe(time.monotonic() - req.consumed_at)
        self._emit(req, event)
        if self._observer is not None:
            self._observer(req)
        self._gauges()
        self._wake.set()

    def _emit(self, req: Request, event: Event, *, answers: bool = False) -> None:
        req.unacked += 1
        self._pub.emit(event, req.partition, lambda exc: self._delivered(req, exc), answers=answers)

    def _delivered(self, req: Request, exc: BaseException | None) -> None:
        req.unacked -= 1
        if exc is not None and req.undelivered is None:
            req.undelivered = exc
            if not req.done:  # still generating: stop, its text can no longer be whole
                req.done = True
                if req in self.waiting:
                    self.waiting.remove(req)
                if self.running.pop(req.seq_id, None) is not None:
                    self.engine.release(req.seq_id)
                self._gauges()
        if req.unacked or req.abandoned or not (req.final_emitted or req.undelivered):
            return
        if self.by_request.get(req.request_id) is not req:
            return  # superseded (revoked, then assigned again): not ours to settle
        if req.undelivered is None:
            if not req.answered:  # the whole attempt is on chat.completions: now the answer
                req.answered = True
                assert req.final is not None
                self._emit(req, req.final, answers=True)
                return
            self.by_request.pop(req.request_id)
            self._on_done(req)
            return
        delay = min(30.0, self._retry_backoff_s * 2 ** min(req.delivery_failures, 16))
        log.warning(
            "attempt %d of %s lost (%r): running attempt %d in %.1fs",
            req.attempt,
            req.request_id,
            req.undelivered,
            req.attempt + 1,
            delay,
        )
        handle: asyncio.TimerHandle | None = None

        def rerun() -> None:
            assert handle is not None
            self._reruns.discard(handle)
            self._rerun(req)

        handle = asyncio.get_running_loop().call_later(delay, rerun)
        self._reruns.add(handle)

    def _rerun(self, lost: Request) -> None:
        if lost.abandoned or self.by_request.get(lost.request_id) is not lost:
            return
        req = lost.next_attempt()
        self.submit(req)
        if req.delivery_failures > self._delivery_retries:
            if req in self.waiting:
                self.waiting.remove(req)
            self.fail(req, DeliveryFailed(f"events of {req.delivery_failures} attempts lost"))
        elif req.cancelled:
            self.cancel(req.request_id)

    def _started(self, req: Request) -> None:
        self._emit(
            req,
            CompletionStarted(
                request_id=req.request_id,
                conversation_id=req.prompt.conversation_id,
                attempt=req.attempt,
                replica_id=self._replica_id,
                model=self.engine.model_id,  # what actually runs, not what was asked
            ),
        )

    def _flush_due(self, req: Request, now: float) -> None:
        chunk = req.chunker.take_due(now)
        if chunk is not None:
            self._send_chunk(req, chunk.seq, chunk.text, chunk.token_count)

    def _flush(self, req: Request, now: float) -> None:
        chunk = req.chunker.take(now)
        if chunk is not None:
            self._send_chunk(req, chunk.seq, chunk.text, chunk.token_count)

    def _send_chunk(self, req: Request, seq: int, text: str, count: int) -> None:
        req.streamed.append(text)
        self._emit(
            req,
            TokenChunk(
                request_id=req.request_id,
                conversation_id=req.prompt.conversation_id,
                attempt=req.attempt,
                seq=seq,
                text=text,
                token_count=count,
            ),
        )

    def _gauges(self) -> None:
        """Called whenever the batch or the queue changes."""
        if self._pace is not None:
            self._pace.update(len(self.running))
        self._metrics.running.set(len(self.running))
        self._metrics.waiting.set(len(self.waiting))
