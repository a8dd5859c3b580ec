"""Cursors are opaque and strict; the Meilisearch filter cannot be widened by a user id;
snippets are escaped HTML whose only tags are the hits' <mark>."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infra.http import BadRequest
from query_api.assembler import Out
from query_api.cursor import _encode, decode_keyset, decode_offset, encode_keyset, encode_offset
from query_api.search import HIT_END, HIT_START, meili_filter, snippet_html
from query_api.sse import frame


def test_keyset_cursor_round_trips_microseconds() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert decode_keyset(encode_keyset(at, "m-1")) == (at, "m-1")
    assert decode_offset(encode_offset(40)) == 40
    assert decode_keyset(None) is None and decode_offset(None) == 0


@pytest.mark.parametrize("bad", ["", "!!!", "bm90IGpzb24", encode_offset(3)])
def test_malformed_cursors_are_400(bad: str) -> None:
    with pytest.raises(BadRequest):
        decode_keyset(bad or "x")


@pytest.mark.parametrize("offset", [-1, 10**30, True])
def test_an_offset_cursor_out_of_range_is_400(offset: int) -> None:
    with pytest.raises(BadRequest):
        decode_offset(_encode(["o", offset]))


def test_a_keyset_cursor_naming_a_nul_id_is_400() -> None:
    with pytest.raises(BadRequest):
        decode_keyset(encode_keyset(datetime(2026, 1, 1, tzinfo=UTC), "m\x00"))


def test_snippet_escapes_the_text_then_marks_the_hits() -> None:
    marked = f'<img src=x onerror=alert(1)> "{HIT_START}kafka{HIT_END}" &amp;'
    assert snippet_html(marked) == (
        "&lt;img src=x onerror=alert(1)&gt; &quot;<mark>kafka</mark>&quot; &amp;amp;"
    )
    # the tags a message holds are text; sentinels a message holds never unbalance the tags
    assert snippet_html("<mark>x</mark>") == "&lt;mark&gt;x&lt;/mark&gt;"
    assert snippet_html(f"a{HIT_END}b{HIT_START}c{HIT_START}d") == "ab<mark>cd</mark>"


def test_offset_cursor_rejects_keyset_cursor() -> None:
    with pytest.raises(BadRequest):
        decode_offset(encode_keyset(datetime.now(UTC), "x"))


def test_meili_filter_escapes_quotes_and_backslashes() -> None:
    assert meili_filter("alice") == 'user_id = "alice"'
    assert meili_filter('a" OR user_id != "x') == 'user_id = "a\\" OR user_id != \\"x"'
    assert meili_filter("a\\") == 'user_id = "a\\\\"'


def test_sse_frame_is_the_brief_wire_format() -> None:
    out = Out(
        "chunk", "1:0", {"request_id": "r", "attempt": 1, "seq": 0, "text": "Hel", "token_count": 2}
    )
    assert frame(out) == (
        b'event: chunk\nid: 1:0\ndata: {"request_id": "r", "attempt": 1, "seq": 0, '
        b'"text": "Hel", "token_count": 2}\n\n'
    )
    assert frame(Out("reset", None, {"request_id": "r", "attempt": 2})) == (
        b'event: reset\ndata: {"request_id": "r", "attempt": 2}\n\n'
    )
