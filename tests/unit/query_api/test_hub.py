"""The hub's folding and fan-out, fed events directly (no Kafka)."""

from __future__ import annotations

from query_api.hub import Hub
from query_api.settings import QuerySettings
from schemas.events import CompletionFinished, CompletionStarted, TokenChunk, Usage

RID, CID = "req-h", "conv-h"


def tok(attempt: int, seq: int) -> TokenChunk:
    return TokenChunk(
        request_id=RID, conversation_id=CID, attempt=attempt, seq=seq, text=f"{seq}", token_count=1
    )


def make_hub(queue: int = 8) -> Hub:
    return Hub(QuerySettings(client_queue_size=queue, finished_ttl_s=0.0))


def test_snapshot_and_queue_are_complementary() -> None:
    hub = make_hub()
    hub._fold(
        CompletionStarted(
            request_id=RID, conversation_id=CID, attempt=1, replica_id="r", model="m"
        ),
        3,
        10,
    )
    hub._fold(tok(1, 0), 3, 11)
    sub, snap = hub.subscribe(RID)
    assert snap is not None and snap.anchored and [e.seq for e in snap.events] == [0]
    hub._fold(tok(1, 1), 3, 12)
    hub._fold(tok(1, 1), 3, 13)  # redelivered duplicate
    assert [e.seq for e in sub.take()] == [1] and sub.take() == []
    assert hub.position_of(RID) == (3, 10)


def test_joined_mid_way_is_not_anchored_and_a_new_attempt_restarts() -> None:
    hub = make_hub()
    hub._fold(tok(1, 4), 0, 5)
    _, snap = hub.subscribe(RID)
    assert snap is not None and not snap.anchored and snap.events[0].first_seq == 4
    hub._fold(tok(2, 0), 0, 6)
    _, snap = hub.subscribe(RID)
    assert (
        snap is not None and snap.anchored and [(e.attempt, e.seq) for e in snap.events] == [(2, 0)]
    )
    hub._fold(tok(1, 5), 0, 7)  # the superseded attempt is ignored
    _, snap = hub.subscribe(RID)
    assert snap is not None and len(snap.events) == 1


def test_a_slow_subscriber_is_dropped_without_slowing_others() -> None:
    hub = make_hub(queue=2)
    slow, _ = hub.subscribe(RID)
    fast, _ = hub.subscribe(RID)
    for seq in range(3):
        hub._fold(tok(1, seq), 0, seq)
        fast.take()
    assert slow.overflowed and not fast.overflowed
    assert hub.subscriber_count == 1 and hub.overflows == 1


def test_finished_requests_are_swept_once_unwatched() -> None:
    hub = make_hub()
    hub._fold(tok(1, 0), 0, 0)
    hub._fold(
        CompletionFinished(
            request_id=RID, conversation_id=CID, attempt=1, finish_reason="stop", usage=Usage(1, 1)
        ),
        0,
        1,
    )
    sub, _ = hub.subscribe(RID)
    assert hub.sweep(now=1e12) == 0  # watched
    hub.unsubscribe(sub)
    assert hub.sweep(now=1e12) == 1 and hub.buffered_requests == 0
