"""Our SSE events -> OpenAI chunks / object; the SSE parser; context composition; tracing."""

from __future__ import annotations

import json

import pytest

from command_api.openai_format import ChunkStream, CompletionError, collect
from command_api.readmodel import compose
from command_api.tracing import traceparent_for
from command_api.upstream import SseEvent, parse_sse
from schemas import ChatMessage


async def _aiter(items):
    for item in items:
        yield item


def ev(event: str, **data) -> SseEvent:
    return SseEvent(event, data)


async def test_sse_parser_skips_comments_and_joins_data_lines() -> None:
    lines = [
        ": ping",
        "",
        "event: chunk",
        "id: 1:0",
        'data: {"a":',
        "data: 1}",
        "",
        "event: done",
        "data: {}",
        "",
    ]
    got = [e async for e in parse_sse(_aiter(lines))]
    assert got == [SseEvent("chunk", {"a": 1}, "1:0"), SseEvent("done", {}, None)]


def test_chunks_then_done_with_usage() -> None:
    s = ChunkStream("r1", "m", "/s", include_usage=True, created=7)
    first = json.loads(s.first()[6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["usage"] is None and first["id"] == "r1" and first["created"] == 7
    frames, over = s.on_event(ev("chunk", attempt=1, seq=0, text="Hi"))
    assert not over and json.loads(frames[0][6:])["choices"][0]["delta"] == {"content": "Hi"}
    frames, over = s.on_event(
        ev(
            "done",
            attempt=1,
            finish_reason="length",
            usage={"prompt_tokens": 2, "completion_tokens": 1},
        )
    )
    assert over and frames[-1] == "data: [DONE]\n\n"
    final, usage = (json.loads(f[6:]) for f in frames[:2])
    assert final["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 3


def test_a_stale_attempt_is_dropped_and_a_newer_one_counts_as_reset() -> None:
    s = ChunkStream("r1", "m", "/s/r1")
    assert s.on_event(ev("chunk", attempt=2, seq=0, text="a"))[0]
    assert s.on_event(ev("chunk", attempt=1, seq=5, text="old")) == ([], False)
    frames, over = s.on_event(ev("chunk", attempt=3, seq=0, text="b"))
    assert over and json.loads(frames[0][6:])["error"]["code"] == "stream_reset"


def test_upstream_error_is_relayed_and_ends_the_stream() -> None:
    s = ChunkStream("r1", "m", "/s")
    frames, over = s.on_event(ev("error", error={"message": "x", "code": "c"}))
    assert over and json.loads(frames[0][6:]) == {"error": {"message": "x", "code": "c"}}


async def test_collect_starts_over_on_reset_and_raises_on_error() -> None:
    events = [
        ev("chunk", attempt=1, text="a"),
        ev("reset", attempt=2),
        ev("chunk", attempt=2, text="b"),
        ev("done", attempt=2, finish_reason="stop"),
    ]
    out = await collect(_aiter(events), request_id="r", model="m", conversation_id="c")
    assert out["choices"][0]["message"]["content"] == "b" and out["conversation_id"] == "c"
    with pytest.raises(CompletionError):
        await collect(
            _aiter([ev("error", error={"message": "no"})]),
            request_id="r",
            model="m",
            conversation_id="c",
        )
    with pytest.raises(CompletionError):
        await collect(
            _aiter([ev("chunk", attempt=1, text="a")]),
            request_id="r",
            model="m",
            conversation_id="c",
        )


def test_compose_puts_new_system_messages_first_and_new_turns_last() -> None:
    history = [ChatMessage("user", "u1"), ChatMessage("assistant", "a1")]
    new = (ChatMessage("system", "sys"), ChatMessage("user", "u2"))
    assert compose(history, new) == (new[0], *history, new[1])


def test_traceparent_is_kept_when_valid_else_minted() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert traceparent_for(good) == good
    for bad in (None, "", "garbage", "00-" + "0" * 32 + "-b7ad6b7169203331-01"):
        minted = traceparent_for(bad)
        assert minted != bad and len(minted) == 55 and minted.startswith("00-")
