"""The ordering rules of a stream, source by source, without services."""

from __future__ import annotations

import pytest

from query_api.assembler import Assembler, Gap
from query_api.events import Position, StreamEvent

RID = "req-1"


def chunk(
    attempt: int, seq: int, *, anchored: bool = True, first_seq: int | None = None
) -> StreamEvent:
    return StreamEvent(
        "chunk", RID, attempt, seq, f"a{attempt}s{seq} ", 1, anchored=anchored, first_seq=first_seq
    )


def done(attempt: int, *, anchored: bool = True, first_seq: int | None = None) -> StreamEvent:
    return StreamEvent(
        "done", RID, attempt, data={"attempt": attempt}, anchored=anchored, first_seq=first_seq
    )


def feed(asm: Assembler, events: list[StreamEvent]) -> list[tuple[str, str | None]]:
    out = []
    for ev in events:
        assert asm.gap(ev) is None
        out += [(o.event, o.id) for o in asm.accept(ev)]
    return out


def test_duplicates_from_overlapping_sources_are_sent_once() -> None:
    asm = Assembler(RID)
    events = [chunk(1, 0), chunk(1, 1), chunk(1, 0), chunk(1, 1), chunk(1, 2), done(1), chunk(1, 3)]
    assert feed(asm, events) == [
        ("chunk", "1:0"),
        ("chunk", "1:1"),
        ("chunk", "1:2"),
        ("done", "1:done"),
    ]
    assert asm.finished


def test_resume_skips_what_the_client_has() -> None:
    asm = Assembler(RID, Position(1, 1))
    assert feed(asm, [chunk(1, 0), chunk(1, 1), chunk(1, 2), done(1)]) == [
        ("chunk", "1:2"),
        ("done", "1:done"),
    ]


def test_resume_after_done_sends_nothing() -> None:
    asm = Assembler(RID, Position.parse("1:done"))
    assert asm.finished
    assert feed(asm, [chunk(1, 0), done(1)]) == []


def test_a_new_attempt_resets_and_never_mixes() -> None:
    asm = Assembler(RID)
    out = feed(
        asm, [chunk(1, 0), chunk(1, 1), chunk(2, 0), chunk(1, 2), chunk(2, 1), done(1), done(2)]
    )
    assert out == [
        ("chunk", "1:0"),
        ("chunk", "1:1"),
        ("reset", None),
        ("chunk", "2:0"),
        ("chunk", "2:1"),
        ("done", "2:done"),
    ]


def test_resume_in_a_superseded_attempt_resets_first() -> None:
    asm = Assembler(RID, Position(1, 5))
    assert feed(asm, [chunk(2, 0), done(2)]) == [
        ("reset", None),
        ("chunk", "2:0"),
        ("done", "2:done"),
    ]


def test_no_reset_when_the_client_has_nothing_yet() -> None:
    asm = Assembler(RID)
    assert feed(asm, [chunk(2, 0)]) == [("chunk", "2:0")]


def test_gaps_are_reported_not_skipped() -> None:
    asm = Assembler(RID)
    assert asm.gap(chunk(1, 3, anchored=False, first_seq=3)) == Gap(1, 0, 3)
    feed(asm, [chunk(1, 0)])
    assert asm.gap(chunk(1, 3)) == Gap(1, 1, 3)
    # a finish the hub saw without any chunk of its attempt: everything before is unknown
    assert asm.gap(done(1, anchored=False)) == Gap(1, 1, None)
    assert asm.gap(done(1, anchored=False, first_seq=2)) is None
    assert asm.gap(done(1)) is None


@pytest.mark.parametrize("raw", ["x", "1", "1:x", "-1:0", "1:-2", ":"])
def test_garbage_event_ids_are_rejected(raw: str) -> None:
    with pytest.raises(ValueError):
        Position.parse(raw)


def test_event_ids_parse() -> None:
    assert Position.parse(None) is None
    assert Position.parse("3:7") == Position(3, 7)
    assert Position.parse("2:done") == Position(2, -1, done=True)
