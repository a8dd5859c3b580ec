"""The fold on in-memory state: ordering, duplicates, attempts, gaps, deletes."""

from __future__ import annotations

import random
from dataclasses import replace

from processors.fold import FoldState, fold_batch
from processors.script import Clock, exchange
from schemas.events import (
    CompletionFinished,
    ConversationDeleted,
    ConversationRenamed,
    PromptSubmitted,
    TokenChunk,
    Usage,
)


def _text(state: FoldState, rid: str) -> str:
    return "".join(state.requests[rid].appended)


def test_prompt_chunks_finish() -> None:
    clock = Clock()
    events = exchange(clock, conversation_id="c", request_id="r", user_id="u",
                      prompt="hi", answer=["Hel", "lo"])  # fmt: skip
    state = fold_batch(FoldState(), events)
    req = state.requests["r"]
    assert (_text(state, "r"), req.status, req.last_seq, req.tokens) == ("Hello", "finished", 1, 2)
    assert req.user_message == ("hi", events[0].occurred_at)
    conv = state.conversations["c"]
    assert conv.exists and conv.last_request_id == "r"
    assert conv.updated_at == events[-1].occurred_at


def test_duplicates_change_nothing() -> None:
    events = exchange(Clock(), conversation_id="c", request_id="r", user_id="u",
                      prompt="hi", answer=["a", "b", "c"])  # fmt: skip
    once = fold_batch(FoldState(), events)
    twice = fold_batch(FoldState(), events + events[2:4] + events)
    assert _text(twice, "r") == _text(once, "r") == "abc"
    assert twice.requests["r"].tokens == 3


def test_gap_is_held_until_filled() -> None:
    events = exchange(Clock(), conversation_id="c", request_id="r", user_id="u",
                      prompt="hi", answer=["a", "b", "c", "d"], finish=False)  # fmt: skip
    prompt, started, c0, c1, c2, c3 = events
    state = fold_batch(FoldState(), [prompt, started, c0, c2, c3])
    assert _text(state, "r") == "a" and set(state.requests["r"].held) == {(1, 2), (1, 3)}
    fold_batch(state, [c1])
    assert _text(state, "r") == "abcd" and not state.requests["r"].held


def test_higher_attempt_restarts_and_lower_is_ignored() -> None:
    clock = Clock()
    first = exchange(clock, conversation_id="c", request_id="r", user_id="u",
                     prompt="hi", answer=["old"], finish=False)  # fmt: skip
    second = exchange(clock, conversation_id="c", request_id="r", user_id="u", prompt="hi",
                      answer=["new", "!"], attempt=2, with_prompt=False)  # fmt: skip
    last = first[-1]
    assert isinstance(last, TokenChunk)
    late = replace(last, seq=1, text="zombie")
    state = fold_batch(FoldState(), first + second + [late])
    req = state.requests["r"]
    assert (_text(state, "r"), req.attempt, req.reset, req.drop_chunks_below) == (
        "new!",
        2,
        True,
        2,
    )


def test_completion_before_prompt_gives_the_same_rows() -> None:
    events = exchange(Clock(), conversation_id="c", request_id="r", user_id="u",
                      prompt="hi", answer=["x", "y"])  # fmt: skip
    in_order = fold_batch(FoldState(), events)
    reordered = fold_batch(FoldState(), events[1:] + events[:1])
    for field in ("status", "user_id", "model", "created_at", "message_created_at", "tokens"):
        assert getattr(reordered.requests["r"], field) == getattr(in_order.requests["r"], field)
    assert reordered.conversations["c"].updated_at == in_order.conversations["c"].updated_at


def test_delete_filters_events_before_and_after() -> None:
    clock = Clock()
    events = exchange(clock, conversation_id="c", request_id="r", user_id="u",
                      prompt="hi", answer=["x"])  # fmt: skip
    delete = ConversationDeleted(conversation_id="c", user_id="u", occurred_at=clock())
    late = CompletionFinished(request_id="r", conversation_id="c", attempt=1,
                              finish_reason="stop", usage=Usage(1, 1), occurred_at=clock())  # fmt: skip
    state = fold_batch(FoldState(), [*events, delete, late])
    assert state.newly_deleted == {"c": delete.occurred_at}
    assert not state.requests and not state.conversations


def test_older_rename_redelivered_does_not_win() -> None:
    clock = Clock()
    events = exchange(clock, conversation_id="c", request_id="r", user_id="u",
                      prompt="hi", answer=["x"])  # fmt: skip
    a = ConversationRenamed(conversation_id="c", user_id="u", title="A", occurred_at=clock())
    b = ConversationRenamed(conversation_id="c", user_id="u", title="B", occurred_at=clock())
    state = fold_batch(FoldState(), [*events, a, b, a])
    assert state.conversations["c"].title == "B"


def test_shuffled_topics_converge() -> None:
    """Any interleaving of the two topics (each in order) folds to the same request rows."""
    clock = Clock()
    events = exchange(clock, conversation_id="c", request_id="r1", user_id="u",
                      prompt="one", answer=["a", "b"]) + exchange(
        clock, conversation_id="c", request_id="r2", user_id="u", prompt="two", answer=["c"])  # fmt: skip
    convs = [e for e in events if isinstance(e, PromptSubmitted)]
    comps = [e for e in events if not isinstance(e, PromptSubmitted)]
    reference = fold_batch(FoldState(), events)
    rng = random.Random(7)
    for _ in range(20):
        a, b, merged = list(convs), list(comps), []
        while a or b:
            merged.append((a if a and (not b or rng.random() < 0.5) else b).pop(0))
        state = fold_batch(FoldState(), merged)
        for rid in ("r1", "r2"):
            assert _text(state, rid) == _text(reference, rid)
            assert state.requests[rid].status == reference.requests[rid].status
        assert state.conversations["c"].updated_at == reference.conversations["c"].updated_at
        assert state.conversations["c"].last_request_id == "r2"
