"""The replica table (infra/replicas.py): live, stale, stopped, never seen."""

from __future__ import annotations

from datetime import UTC, datetime

from infra.replicas import ReplicaTable
from schemas import ReplicaHeartbeat

T0 = 1_000_000.0


def beat(
    rid: str,
    t: float,
    *,
    model: str = "m",
    state: str = "serving",
    running: int = 1,
    ttft: float | None = 50.0,
) -> ReplicaHeartbeat:
    return ReplicaHeartbeat(
        replica_id=rid,
        model=model,
        state=state,
        running=running,
        waiting=0,
        interval_ms=1000,
        ttft_ms=ttft,
        occurred_at=datetime.fromtimestamp(t, UTC),
    )


def test_a_model_is_available_while_a_replica_beats_and_down_once_its_beats_age_out() -> None:
    now = [T0]
    table = ReplicaTable(stale_s=4, clock=lambda: now[0])
    assert table.health("m") is None  # never seen: not judged
    table.apply(beat("a", T0 - 1))
    table.apply(beat("b", T0 - 2, running=2, ttft=30.0))
    health = table.health("m")
    assert health is not None and health.available
    assert (health.live_replicas, health.running, health.ttft_ms) == (2, 3, 50.0)
    now[0] = T0 + 10  # a SIGKILL: no more beats
    down = table.health("m")
    assert down is not None and not down.available and down.live_replicas == 0
    assert table.models() == ["m"]


def test_a_clean_stop_is_down_at_once_and_an_older_beat_does_not_undo_a_newer_one() -> None:
    table = ReplicaTable(stale_s=4, clock=lambda: T0)
    table.apply(beat("a", T0 - 1, state="stopped"))
    table.apply(beat("a", T0 - 2))  # replayed out of order
    health = table.health("m")
    assert health is not None and not health.available
