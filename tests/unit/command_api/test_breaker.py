"""The breaker's state machine, driven by an injected clock (command_api/breaker.py)."""

from __future__ import annotations

from command_api.breaker import Breaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, seen: list[tuple[State, State, str]] | None = None) -> Breaker:
    def note(model: str, old: State, new: State, reason: str) -> None:
        if seen is not None:
            seen.append((old, new, reason))

    return Breaker(
        "m",
        window_s=30,
        min_calls=4,
        failure_rate=0.5,
        cooldown_s=5,
        clock=clock,
        on_transition=note,
    )


def state(b: Breaker) -> str:
    return b.state  # a call: mypy would otherwise narrow the attribute between asserts


def test_an_unknown_model_passes_and_a_known_one_without_replicas_is_refused() -> None:
    clock = Clock()
    b = make(clock)
    b.replicas(None)
    assert b.allow() and state(b) == "closed"
    b.replicas(True)
    assert b.allow()
    b.replicas(False)
    assert not b.allow() and state(b) == "open" and b.opened_for == "no_live_replica"
    assert b.retry_after_s() == 5
    clock.now += 3
    assert b.retry_after_s() == 2


def test_no_replica_stays_open_past_the_cooldown_until_a_replica_beats_again() -> None:
    clock, seen = Clock(), list[tuple[State, State, str]]()
    b = make(clock, seen)
    b.replicas(True)
    b.replicas(False)
    clock.now += 60
    b.replicas(False)
    assert not b.allow() and state(b) == "open"
    b.replicas(True)  # back: half-open, one probe at a time
    assert state(b) == "half_open"
    assert b.allow() and not b.allow()
    clock.now += 5
    b.replicas(True)  # live for a cool-down with no failure: closes by itself
    assert state(b) == "closed" and b.allow()
    assert [(o, n) for o, n, _ in seen] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_a_failure_rate_opens_it_and_a_probe_decides() -> None:
    clock = Clock()
    b = make(clock)
    b.replicas(True)
    for ok in (True, False, True):
        b.record(ok)
    assert state(b) == "closed"  # 3 outcomes: under min_calls
    b.record(False)  # 2 of 4 failed: 50 %
    assert state(b) == "open" and b.opened_for == "failure_rate" and not b.allow()
    clock.now += 5
    assert b.allow() and state(b) == "half_open"  # the probe
    assert not b.allow()  # only one at a time
    b.record(False)
    assert state(b) == "open" and not b.allow()
    clock.now += 5
    assert b.allow()
    b.record(True)
    assert state(b) == "closed" and b.allow()


def test_live_beats_alone_do_not_close_a_breaker_opened_by_failures() -> None:
    clock = Clock()
    b = make(clock)
    b.replicas(True)
    for _ in range(4):
        b.record(False)
    clock.now += 20
    b.replicas(True)
    assert state(b) == "half_open"  # waits for its probe's outcome
    clock.now += 20
    b.replicas(True)
    assert state(b) == "half_open"


def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    b = make(clock)
    b.replicas(True)
    for _ in range(3):
        b.record(False)
    clock.now += 31
    b.record(False)
    assert state(b) == "closed"
