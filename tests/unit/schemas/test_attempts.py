"""The higher-attempt-wins rule the stream relays share."""

from schemas.attempts import attempt_verdict


def test_a_higher_attempt_restarts_a_lower_one_is_stale_unknown_is_current() -> None:
    assert attempt_verdict(2, 3) == "restart"
    assert attempt_verdict(2, 1) == "stale"
    assert attempt_verdict(2, 2) == "current"
    assert attempt_verdict(None, 1) == "current"  # the first chunk sets the attempt
    assert attempt_verdict(1, None) == "current"  # an event that names none
