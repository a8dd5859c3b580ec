"""The fold on in-memory state: ordering, duplicates, attempts, gaps, deletes."""

from __future__ import annotations

import random
from dataclasses import replace

from processors.fold import CONTEXT_STEP, FoldState, fold_batch
from processors.script import Clock, exchange
from schemas.events import (
    BranchSwitched,
    ChatMessage,
    CompletionFinished,
    CompletionStarted,
    ConversationDeleted,
    ConversationRenamed,
    Event,
    GenerationParams,
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
    assert req.user_messages == [("r:user", "user", "hi", events[0].occurred_at)]
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


def _final(e: list[Event]) -> CompletionFinished:
    """The exchange's final event as the replica writes it to chat.answers (v2, with text)."""
    last = e[-1]
    assert isinstance(last, CompletionFinished)
    text = "".join(c.text for c in e if isinstance(c, TokenChunk) and c.attempt == last.attempt)
    return replace(last, text=text)


def test_final_with_text_needs_no_chunks() -> None:
    events = exchange(Clock(), conversation_id="c", request_id="r", user_id="u",
                      prompt="hi", answer=["Hel", "lo"])  # fmt: skip
    state = fold_batch(FoldState(), [events[0], _final(events)])
    req = state.requests["r"]
    assert (_text(state, "r"), req.status, req.tokens, req.reset) == ("Hello", "finished", 2, True)


def test_chunks_after_the_final_are_kept_for_streams_but_change_no_answer() -> None:
    events = exchange(Clock(), conversation_id="c", request_id="r", user_id="u",
                      prompt="hi", answer=["Hel", "lo"])  # fmt: skip
    prompt, started, c0, c1, _ = events
    assert isinstance(c1, TokenChunk)
    final = _final(events)
    state = fold_batch(FoldState(), [prompt, final, started, c0, replace(c1, text="XX"), final])
    req = state.requests["r"]
    assert (_text(state, "r"), req.status, req.tokens) == ("Hello", "finished", 2)
    assert req.updated_at == final.occurred_at
    assert [c[1] for c in req.new_chunks] == [0, 1]  # the chunks table still gets them


def test_three_topics_in_any_interleaving_fold_to_the_same_answer() -> None:
    """chat.conversations, chat.completions and chat.answers are read independently."""
    clock = Clock()
    e1 = exchange(clock, conversation_id="c", request_id="r1", user_id="u", prompt="one",
                  answer=["a", "b"])  # fmt: skip
    e2a = exchange(clock, conversation_id="c", request_id="r2", user_id="u", prompt="two",
                   answer=["x"], finish=False)  # fmt: skip
    e2b = exchange(clock, conversation_id="c", request_id="r2", user_id="u", prompt="",
                   answer=["y", "z"], attempt=2, with_prompt=False)  # fmt: skip
    convs = [e for e in e1 + e2a if isinstance(e, PromptSubmitted)]
    comps = [e for e in e1 + e2a + e2b if not isinstance(e, PromptSubmitted)]
    answers = [_final(e1), _final(e2b)]
    reference = fold_batch(FoldState(), convs + comps)
    assert (_text(reference, "r1"), _text(reference, "r2")) == ("ab", "yz")
    rng = random.Random(11)
    for _ in range(40):
        queues: list[list[Event]] = [list(convs), list(comps), list(answers)]
        merged: list[Event] = []
        while any(queues):
            merged.append(rng.choice([q for q in queues if q]).pop(0))
        for state in (fold_batch(FoldState(), merged), fold_batch(FoldState(), merged + merged)):
            for rid in ("r1", "r2"):
                got, want = state.requests[rid], reference.requests[rid]
                assert _text(state, rid) == _text(reference, rid)
                assert (got.status, got.attempt, got.tokens, got.updated_at, got.finished_at) == (
                    want.status, want.attempt, want.tokens, want.updated_at, want.finished_at
                )  # fmt: skip
            assert state.conversations["c"].updated_at == reference.conversations["c"].updated_at


def test_a_lower_attempts_final_from_answers_loses_to_a_higher_attempt() -> None:
    clock = Clock()
    first = exchange(clock, conversation_id="c", request_id="r", user_id="u", prompt="hi",
                     answer=["old"])  # fmt: skip
    second = exchange(clock, conversation_id="c", request_id="r", user_id="u", prompt="",
                      answer=["new"], attempt=2, with_prompt=False)  # fmt: skip
    state = fold_batch(FoldState(), [first[0], *second, _final(first)])
    assert (_text(state, "r"), state.requests["r"].attempt) == ("new", 2)


def _prompt(rid: str, at: Clock, *messages: tuple[str, str]) -> PromptSubmitted:
    return PromptSubmitted(request_id=rid, conversation_id="c", user_id="u", model="m",
                           messages=tuple(ChatMessage(r, t) for r, t in messages),
                           params=GenerationParams(max_tokens=8), occurred_at=at())  # fmt: skip


def test_a_first_prompt_stores_its_whole_context_a_continued_one_its_last_message() -> None:
    clock = Clock()
    sent = (("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "why?"))
    first = _prompt("r1", clock, *sent)
    state = fold_batch(FoldState(), [first])
    t = first.occurred_at
    assert state.requests["r1"].user_messages == [
        ("r1:ctx000", "system", "be brief", t - 3 * CONTEXT_STEP),
        ("r1:ctx001", "user", "hi", t - 2 * CONTEXT_STEP),
        ("r1:ctx002", "assistant", "hello", t - CONTEXT_STEP),
        ("r1:user", "user", "why?", t),
    ]
    composed = (*sent, ("assistant", "because"), ("user", "and?"))
    later = _prompt("r2", clock, *composed)
    fold_batch(state, [later, first])  # a redelivered first prompt adds nothing either
    assert state.requests["r2"].user_messages == [("r2:user", "user", "and?", later.occurred_at)]
    assert len(state.requests["r1"].user_messages) == 4


def test_started_after_final_is_a_no_op() -> None:
    events = exchange(Clock(), conversation_id="c", request_id="r", user_id="u",
                      prompt="hi", answer=["a"])  # fmt: skip
    started = events[1]
    assert isinstance(started, CompletionStarted)
    state = fold_batch(FoldState(), [events[0], _final(events), started])
    assert state.requests["r"].status == "finished"


def _p(clock: Clock, rid: str, *texts: str, **tree: object) -> PromptSubmitted:
    return PromptSubmitted(
        request_id=rid, conversation_id="c", user_id="u", model="m",
        messages=tuple(ChatMessage("user", t) for t in texts),
        params=GenerationParams(max_tokens=4), occurred_at=clock(), **tree,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_tree_places_regenerates_edits_and_a_switch() -> None:
    clock = Clock()
    r1 = _p(clock, "r1", "sys?", "q1")
    r2 = _p(clock, "r2", "q2")  # a v1 continuation that did not name its parent
    r3 = _p(clock, "r3", "q2", parent_request_id="r1", branch="regenerate", sibling_of="r2")
    root_edit = _p(clock, "r4", "sys?", "q1 again", branch="edit", sibling_of="r1")
    switch = BranchSwitched(conversation_id="c", user_id="u", request_id="r3", occurred_at=clock())
    older = replace(switch, request_id="r2", occurred_at=r1.occurred_at)  # redelivered late
    state = fold_batch(FoldState(), [r1, r2, r3, root_edit, switch, older])
    rows = {r: (q.parent_request_id, q.origin_request_id, q.branch) for r, q in state.requests.items()}
    assert rows == {
        "r1": (None, "r1", None),
        "r2": ("r1", "r2", None),
        "r3": ("r1", "r2", "regenerate"),
        "r4": (None, "r4", "edit"),
    }
    # A root (the edit of the first message) keeps its whole context, a child only its last.
    assert [m[0] for m in state.requests["r4"].user_messages] == ["r4:ctx000", "r4:user"]
    assert [m[0] for m in state.requests["r3"].user_messages] == ["r3:user"]
    conv = state.conversations["c"]
    assert (conv.current_request_id, conv.last_request_id) == ("r3", "r4")
