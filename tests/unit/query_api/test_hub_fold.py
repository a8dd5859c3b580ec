"""The hub's pure fold: fed events and a clock by hand, no Kafka, no event loop."""

from __future__ import annotations

from query_api.hub_fold import Fold, status_of
from schemas.events import (
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    FinishReason,
    Usage,
)


def chunk(fold: Fold, rid: str, attempt: int, seq: int, now: float = 0.0, text: str = "x") -> bool:
    return fold.chunk(rid, "c", attempt, seq, text, 1, 0.0, 0, seq, now, encode=False) is not None


def finished(rid: str, attempt: int, reason: FinishReason = "stop") -> CompletionFinished:
    return CompletionFinished(
        request_id=rid,
        conversation_id="c",
        attempt=attempt,
        finish_reason=reason,
        usage=Usage(2, 3),
    )


def test_the_highest_attempt_wins_and_duplicates_and_stragglers_are_dropped() -> None:
    fold = Fold(100, 10**9)
    assert chunk(fold, "r", 1, 0) and chunk(fold, "r", 1, 1)
    assert not chunk(fold, "r", 1, 1)  # redelivered
    assert chunk(fold, "r", 2, 0)  # a retry restarts the buffer
    assert not chunk(fold, "r", 1, 2)  # the dead attempt's straggler
    assert fold.event(finished("r", 2), 0, 9, 0.0, "m") is not None
    assert not chunk(fold, "r", 2, 1)  # after the end
    snap = fold.snapshot("r")
    assert snap is not None and snap.anchored
    assert [(e.kind, e.attempt, e.seq) for e in snap.events] == [("chunk", 2, 0), ("done", 2, -1)]
    assert snap.events[-1].data["model"] == "m"  # the prompt's model: no CompletionStarted


def test_joined_mid_way_is_not_anchored_until_a_start() -> None:
    fold = Fold(100, 10**9)
    chunk(fold, "r", 1, 4)
    snap = fold.snapshot("r")
    assert snap is not None and not snap.anchored and snap.events[0].first_seq == 4
    started = CompletionStarted(
        request_id="r", conversation_id="c", attempt=2, replica_id="x", model="m2"
    )
    fold.event(started, 0, 5, 0.0, None)
    snap = fold.snapshot("r")
    assert snap is not None and snap.anchored and snap.events == ()


def test_buffers_are_bounded_by_count_least_recently_touched_first() -> None:
    fold = Fold(max_requests=2, max_bytes=10**9)
    chunk(fold, "a", 0, 0, now=1)
    chunk(fold, "b", 0, 0, now=2)
    chunk(fold, "a", 0, 1, now=3)  # a is now the more recent
    chunk(fold, "c", 0, 0, now=4)
    assert fold.over_bounds()
    assert fold.evict(keep="c") == ["b"]
    assert list(fold.buffers) == ["a", "c"] and fold.evictions == 1


def test_buffers_are_bounded_by_bytes_and_the_count_of_bytes_is_exact() -> None:
    fold = Fold(max_requests=100, max_bytes=5000)
    for seq in range(3):
        chunk(fold, "big", 0, seq, text="y" * 1000)
    chunk(fold, "small", 0, 0)
    assert fold.bytes > 3000 and not fold.over_bounds()
    chunk(fold, "small", 0, 1, text="z" * 2000)
    assert fold.over_bounds()
    assert fold.evict(keep="small") == ["big"]
    assert not fold.over_bounds()
    fold.drop("small")
    assert fold.bytes == 0 and not fold.buffers


def test_a_new_attempt_releases_the_old_attempts_bytes() -> None:
    fold = Fold(100, 10**9)
    chunk(fold, "r", 1, 0, text="y" * 5000)
    before = fold.bytes
    chunk(fold, "r", 2, 0, text="")
    assert fold.bytes == before - 5000


def test_sweep_forgets_finished_and_idle_requests_unless_watched() -> None:
    fold = Fold(100, 10**9)
    chunk(fold, "done", 0, 0, now=0)
    fold.event(finished("done", 0), 0, 1, 0.0, None)
    chunk(fold, "live", 0, 0, now=0)
    chunk(fold, "watched", 0, 0, now=0)
    fold.event(finished("watched", 0), 0, 1, 0.0, None)
    assert fold.sweep(61, {"watched"}, finished_ttl_s=60, idle_ttl_s=900) == ["done"]
    assert fold.sweep(901, set(), finished_ttl_s=60, idle_ttl_s=900) == ["live", "watched"]


def test_status_of_a_snapshot() -> None:
    fold = Fold(100, 10**9)
    chunk(fold, "r", 0, 0)
    snap = fold.snapshot("r")
    assert snap is not None and status_of(snap)["status"] == "streaming"
    fold.event(finished("r", 0, reason="cancelled"), 0, 1, 0.0, None)
    snap = fold.snapshot("r")
    assert snap is not None
    view = status_of(snap)
    assert view["status"] == "cancelled" and view["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
    }
    failed = CompletionFailed(
        request_id="f",
        conversation_id="c",
        attempt=0,
        error_code="oom",
        message="m",
        retryable=False,
    )
    fold.event(failed, 0, 2, 0.0, None)
    snap = fold.snapshot("f")
    assert snap is not None and status_of(snap)["status"] == "failed"


def test_a_deleted_conversations_buffers_are_dropped() -> None:
    fold = Fold(100, 10**9)
    fold.chunk("r1", "gone", 0, 0, "x", 1, 0.0, 0, 0, 0.0, encode=False)
    fold.chunk("r2", "gone", 0, 0, "x", 1, 0.0, 0, 1, 0.0, encode=False)
    fold.chunk("r3", "kept", 0, 0, "x", 1, 0.0, 0, 2, 0.0, encode=False)
    assert sorted(fold.drop_conversation("gone")) == ["r1", "r2"]
    assert list(fold.buffers) == ["r3"]
