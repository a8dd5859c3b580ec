"""A circuit breaker per model (#14): pure state machine, clock injected.

closed     prompts pass. Opens when the beats say no replica of the model is live, or when
           the failure rate of recent outcomes (over `window_s`, at least `min_calls` of
           them) reaches `failure_rate`.
open       prompts are refused (503 `model_unavailable`, Retry-After). After `cooldown_s`
           it half-opens -- for a `no_live_replica` open only once a replica beats again.
half_open  one probe prompt per `cooldown_s` passes; a success closes it, a failure opens
           it again. A breaker opened for want of replicas also closes once replicas have
           been live for `cooldown_s` with no failure: a live beat is itself a probe, and
           a prompt accepted with `Prefer: respond-async` never reports its outcome here.

A model no replica ever announced is not judged (`unknown` passes), so a command API
running without inference (its integration tests, a deployment whose replicas predate
the beat) behaves as before.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]
Transition = Callable[[str, State, State, str], None]  # model, old, new, reason

# Outcomes that say nothing about the model's health: the client's own doing.
CLIENT_CODES = frozenset({"context_length_exceeded", "invalid_prompt", "cancelled"})


class Breaker:
    """See the module docstring."""

    def __init__(
        self,
        model: str,
        *,
        window_s: float = 30.0,
        min_calls: int = 5,
        failure_rate: float = 0.5,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Transition | None = None,
    ) -> None:
        self.model = model
        self.window_s, self.min_calls = window_s, min_calls
        self.failure_rate, self.cooldown_s = failure_rate, cooldown_s
        self._clock = clock
        self._on_transition = on_transition
        self.state: State = "closed"
        self.reason = "ok"
        self.opened_for = ""  # why it last opened: no_live_replica | failure_rate | probe failed
        self.changed_at = clock()
        self.replicas_live: bool | None = None  # None: no replica of the model ever seen
        self._live_since: float | None = None
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._probe_at: float | None = None

    # -- inputs ---------------------------------------------------------------------------
    def replicas(self, live: bool | None) -> None:
        """What the beats say now: True (a replica is live), False (known, none live), None."""
        now = self._clock()
        if live and not self.replicas_live:
            self._live_since = now
        self.replicas_live = live
        if live is False and not (self.state == "open" and self.reason == "no_live_replica"):
            self._move("open", "no_live_replica")
        self._tick(now)

    def record(self, ok: bool) -> None:
        """The outcome of a prompt that got through."""
        now = self._clock()
        if self.state == "half_open":
            self._probe_at = None
            if ok:
                self._outcomes.clear()
                self._move("closed", "probe succeeded")
            else:
                self._move("open", "probe failed")
            return
        self._outcomes.append((now, ok))
        self._trim(now)
        if self.state == "closed" and len(self._outcomes) >= self.min_calls:
            failed = sum(1 for _, good in self._outcomes if not good)
            if failed / len(self._outcomes) >= self.failure_rate:
                self._move("open", "failure_rate")

    # -- decisions ------------------------------------------------------------------------
    def allow(self) -> bool:
        """Whether a new prompt may pass now (a half-open breaker lets one probe through)."""
        now = self._clock()
        self._tick(now)
        if self.state == "closed":
            return True
        if self.state == "half_open" and (
            self._probe_at is None or now - self._probe_at >= self.cooldown_s
        ):
            self._probe_at = now
            return True
        return False

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: what is left of the cool-down, at least 1."""
        left = self.cooldown_s - (self._clock() - self.changed_at)
        return max(1, math.ceil(left if self.state == "open" else self.cooldown_s))

    # -- internals ------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        if (
            self.state == "open"
            and now - self.changed_at >= self.cooldown_s
            and (self.opened_for != "no_live_replica" or self.replicas_live)
        ):
            self._move("half_open", "cool-down over")
        if (
            self.state == "half_open"
            and self.replicas_live
            and self._live_since is not None
            and now - max(self._live_since, self.changed_at) >= self.cooldown_s
            and self.opened_for == "no_live_replica"
            and not self._recent_failure(now)
        ):
            self._outcomes.clear()
            self._move("closed", "replicas live")

    def _recent_failure(self, now: float) -> bool:
        self._trim(now)
        return any(not ok for t, ok in self._outcomes if now - t <= self.cooldown_s)

    def _trim(self, now: float) -> None:
        while self._outcomes and now - self._outcomes[0][0] > self.window_s:
            self._outcomes.popleft()

    def _move(self, state: State, reason: str) -> None:
        old = self.state
        self.state, self.reason, self.changed_at = state, reason, self._clock()
        if state == "open":
            self.opened_for = reason
        if state != "half_open":
            self._probe_at = None
        if old != state and self._on_transition is not None:
            self._on_transition(self.model, old, state, reason)
