"""The sliding window's arithmetic and its OpenAI-style headers."""

from __future__ import annotations

import pytest

from command_api.ratelimit import WindowState, format_duration, headers, retry_after


def test_remaining_counts_down_and_reset_is_when_the_oldest_leaves() -> None:
    s = WindowState(limit=60, window_s=60, used=1, oldest_age_s=0.0)
    assert (s.remaining, s.exhausted, s.reset_s) == (59, False, 0.0)
    assert headers(s) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1m0s",
    }


def test_exhausted_window_tells_how_long_until_a_slot_frees() -> None:
    s = WindowState(limit=60, window_s=60, used=60, oldest_age_s=42.5)
    assert s.exhausted and s.remaining == 0
    assert s.reset_s == pytest.approx(17.5)
    assert retry_after(s.reset_s) == "18"
    assert headers(s)["x-ratelimit-reset-requests"] == "18s"


def test_over_the_limit_never_goes_negative_and_retry_after_is_at_least_one() -> None:
    s = WindowState(limit=5, window_s=60, used=9, oldest_age_s=60.0)
    assert s.remaining == 0 and s.reset_s == 0.0
    assert retry_after(s.reset_s) == "1"


def test_disabled_limit_has_no_headers() -> None:
    s = WindowState(limit=0, window_s=60, used=1000, oldest_age_s=1)
    assert not s.exhausted and headers(s) == {}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.2501, "251ms"), (1, "1s"), (59.2, "1m0s"), (61, "1m1s"), (360, "6m0s")],
)
def test_durations_in_openai_style(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
