"""The hub's folding and fan-out, fed events directly (no Kafka)."""

from __future__ import annotations

import asyncio

from query_api.hub import Hub
from query_api.settings import QuerySettings
from schemas.events import (
    ChatMessage,
    CompletionFinished,
    CompletionStarted,
    GenerationParams,
    PromptSubmitted,
    TokenChunk,
    Usage,
)

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


def prompt(request_id: str) -> PromptSubmitted:
    return PromptSubmitted(
        request_id=request_id,
        conversation_id="c",
        user_id="alice",
        model="m",
        messages=(ChatMessage("user", "hi"),),
        params=GenerationParams(max_tokens=4),
    )


async def test_a_waiter_for_an_owner_wakes_when_the_prompt_arrives() -> None:
    hub = make_hub()
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(hub.wait_owner("r1", timeout_s=5))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    started = loop.time()
    hub._learn_owner(prompt("r1"))
    owner = await waiting
    assert owner is not None and owner.user_id == "alice"
    assert loop.time() - started < 0.05  # woken by the arrival, not by a poll
    assert hub.owners.waiters == {}


async def test_waiting_for_an_owner_that_never_comes_times_out_and_forgets() -> None:
    hub = make_hub()
    assert await hub.wait_owner("r2", timeout_s=0.05) is None
    assert hub.owners.waiters == {}
    hub._learn_owner(prompt("r3"))
    assert await hub.wait_owner("r3", timeout_s=5) is not None  # known: at once
