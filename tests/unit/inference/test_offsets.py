"""Offsets are committed only up to the lowest unfinished prompt of each partition."""

from __future__ import annotations

from inference.offsets import OffsetTracker


def test_commit_stops_at_the_lowest_unfinished_prompt():
    t = OffsetTracker()
    t.assign([0, 1])
    t.consumed(0, 10)  # prompt
    t.consumed(0, 11, done=True)  # a cancel
    t.consumed(0, 12)  # prompt
    assert t.pending_commits() == {0: 10}
    t.mark_committed({0: 10})
    t.finish(0, 12)
    assert t.pending_commits() == {}  # 10 still unfinished
    t.finish(0, 10)
    assert t.pending_commits() == {0: 13}


def test_nothing_unfinished_commits_past_the_last_record_and_revoke_forgets():
    t = OffsetTracker()
    t.assign([3])
    t.consumed(3, 5, done=True)
    assert t.pending_commits() == {3: 6}
    t.consumed(3, 6)
    t.revoke([3])
    t.finish(3, 6)  # finished after revoke: ignored, the new owner decides
    assert t.pending_commits() == {}
