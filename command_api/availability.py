"""Which models can answer now: the replica view (chat.replicas) feeding one breaker per
model, with the breakers' metrics. The accept path asks `check(model)` before anything is
written; the paths that wait for an answer report its outcome with `record`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from command_api.breaker import CLIENT_CODES, Breaker, State
from command_api.errors import ModelUnavailable
from command_api.settings import CommandSettings
from infra.replicas import ReplicaView

STATE_VALUE: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}
REFRESH_S = 0.5


class Availability:
    """See the module docstring. `start()` reads the beats; `stop()` ends it."""

    def __init__(self, settings: CommandSettings, registry: CollectorRegistry) -> None:
        self._settings = settings
        self.view = ReplicaView(
            settings.aiokafka_options(),
            settings.topics.replicas,
            settings.replica_stale_s,
            settings.partitions,
        )
        self.breakers: dict[str, Breaker] = {}
        self._state = Gauge(
            "chatlog_command_breaker_state",
            "Breaker state per model: 0 closed, 1 half-open, 2 open",
            ["model"],
            registry=registry,
        )
        self._transitions = Counter(
            "chatlog_command_breaker_transitions",
            "Breaker state changes per model",
            ["model", "from_state", "to_state", "reason"],
            registry=registry,
        )
        self._task: asyncio.Task[None] | None = None
        for model in settings.model_ids:
            self.breaker(model)

    def breaker(self, model: str) -> Breaker:
        b = self.breakers.get(model)
        if b is None:
            s = self._settings
            b = self.breakers[model] = Breaker(
                model,
                window_s=s.breaker_window_s,
                min_calls=s.breaker_min_calls,
                failure_rate=s.breaker_failure_rate,
                cooldown_s=s.breaker_cooldown_s,
                on_transition=self._transition,
            )
            self._state.labels(model).set(0)
        return b

    def _transition(self, model: str, old: State, new: State, reason: str) -> None:
        self._transitions.labels(model, old, new, reason).inc()
        self._state.labels(model).set(STATE_VALUE[new])

    def refresh(self) -> None:
        """Feed every breaker what the beats say now."""
        for model in {*self.breakers, *self.view.table.models()}:
            health = self.view.table.health(model)
            self.breaker(model).replicas(None if health is None else health.available)

    def check(self, model: str) -> None:
        """Raise ModelUnavailable (503, Retry-After) unless a prompt for `model` may pass."""
        self.refresh()
        b = self.breaker(model)
        if b.allow():
            return
        if b.state == "half_open":
            why = "recovering: one probe prompt at a time until it proves healthy"
        elif b.opened_for == "no_live_replica":
            why = "no replica of it is live"
        else:
            why = "too many of its recent generations failed"
        raise ModelUnavailable(
            f"Model {model!r} is unavailable now ({why}); retry later.",
            param="model",
            headers={"Retry-After": str(b.retry_after_s())},
        )

    def record(self, model: str, error_code: str | None) -> None:
        """A waited-for outcome: None (done) or the error code the stream ended with."""
        if error_code in CLIENT_CODES:
            return
        self.breaker(model).record(error_code is None)

    def snapshot(self) -> dict[str, Any]:
        """Per model: breaker state and what the beats say (for /readyz)."""
        self.refresh()
        out: dict[str, Any] = {}
        for model, b in sorted(self.breakers.items()):
            health = self.view.table.health(model)
            out[model] = {
                "breaker": b.state,
                "reason": b.reason,
                "live_replicas": None if health is None else health.live_replicas,
                "running": None if health is None else health.running,
                "waiting": None if health is None else health.waiting,
                "ttft_ms": None if health is None else health.ttft_ms,
            }
        return out

    async def start(self) -> None:
        await self.view.start()
        self._task = asyncio.create_task(self._refresh_loop(), name="breakers")

    async def _refresh_loop(self) -> None:
        while True:  # transitions (and their metrics) happen even with no prompt arriving
            self.refresh()
            await asyncio.sleep(REFRESH_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.view.stop()
