"""`chatlog status`'s verdict: healthy, degraded past the lag threshold, down; its exit code."""

from __future__ import annotations

from infra.system import DEGRADED, DOWN, HEALTHY, Probe, Verdict, assess, exit_code

UP = [Probe("kafka", True, True, "127.0.0.1:19092"), Probe("query_api", True, True, "/readyz")]


def states(verdicts: list[Verdict]) -> dict[str, str]:
    return {v.name: v.state for v in verdicts}


def test_everything_healthy_exits_zero() -> None:
    verdicts = assess(UP, {"postgres": 0, "search": 1_000}, max_lag=1_000)
    assert set(states(verdicts).values()) == {HEALTHY}
    assert exit_code(verdicts) == 0


def test_a_projection_past_the_threshold_is_degraded_and_exits_non_zero() -> None:
    """The issue's case: every process healthy, a projection 4,910 events behind."""
    verdicts = assess(UP, {"postgres": 4_910, "search": 3}, max_lag=1_000)
    assert states(verdicts)["projection postgres"] == DEGRADED
    assert states(verdicts)["projection search"] == HEALTHY
    assert [v.detail for v in verdicts if v.name == "projection postgres"] == [
        "lag 4910 events (max 1000)"
    ]
    assert exit_code(verdicts) == 2


def test_a_stopped_or_unanswering_component_is_down() -> None:
    probes = [*UP, Probe("processors", False, False), Probe("command_api", True, False, "/readyz")]
    verdicts = assess(probes, {"postgres": 0}, max_lag=1_000)
    assert states(verdicts)["processors"] == DOWN
    assert states(verdicts)["command_api"] == DOWN
    assert [v.detail for v in verdicts if v.name == "command_api"] == [
        "running, not answering /readyz"
    ]
    assert exit_code(verdicts) == 1


def test_down_outranks_degraded() -> None:
    verdicts = assess([Probe("processors", False, False)], {"postgres": 5_000}, max_lag=1_000)
    assert exit_code(verdicts) == 1


def test_unreadable_lag_is_down() -> None:
    verdicts = assess(UP, None, max_lag=1_000, lag_error="needs Kafka and PostgreSQL")
    assert verdicts[-1] == Verdict(
        "projections", DOWN, "lag unreadable: needs Kafka and PostgreSQL"
    )
    assert exit_code(verdicts) == 1


def test_each_model_gets_a_line_from_its_breaker() -> None:
    from infra.system import model_verdicts

    verdicts = model_verdicts(
        {
            "up": {"breaker": "closed", "reason": "ok", "live_replicas": 1},
            "down": {"breaker": "open", "reason": "no_live_replica", "live_replicas": 0},
        }
    )
    assert states(verdicts) == {"model down": DOWN, "model up": HEALTHY}
    assert exit_code([*assess(UP, {"postgres": 0}, max_lag=1), *verdicts]) == 1
    assert model_verdicts(None) == []
