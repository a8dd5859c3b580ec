"""U+0000 (which Postgres cannot store) becomes U+FFFD in every string of an event."""

from __future__ import annotations

from processors.scrub import scrub
from schemas.events import ChatMessage, GenerationParams, PromptSubmitted, TokenChunk


def test_nul_is_replaced_in_every_nested_string() -> None:
    p = PromptSubmitted(
        request_id="r", conversation_id="c", user_id="u", model="m\x00",
        messages=(ChatMessage("user", "a\x00b"), ChatMessage("user", "ok")),
        params=GenerationParams(max_tokens=8, stop=("\x00",)),
    )  # fmt: skip
    got = scrub(p)
    assert got.model == "m\ufffd"
    assert [m.content for m in got.messages] == ["a\ufffdb", "ok"]
    assert tuple(got.params.stop) == ("\ufffd",)
    assert got.messages[1] is p.messages[1]
    assert (got.event_id, got.occurred_at) == (p.event_id, p.occurred_at)


def test_an_event_without_nul_is_returned_as_it_is() -> None:
    c = TokenChunk(request_id="r", conversation_id="c", attempt=1, seq=0,
                   text="\u202eé\U0001f600\uffff", token_count=1)  # fmt: skip
    assert scrub(c) is c
