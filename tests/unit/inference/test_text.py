"""Detokeniser, stop matcher and chunker: the text-boundary rules of inference."""

from __future__ import annotations

import random

from inference.chunker import Chunker, Pace
from inference.detok import IncrementalDetokenizer, StopMatcher
from inference.scripted import EOS, ScriptedEngine


def _byte_decode(ids):
    return bytes(i for i in ids if i < EOS).decode(errors="replace")


def test_detokenizer_never_splits_a_multibyte_character():
    text = "héllo wörld — 日本語 🙂!"
    detok = IncrementalDetokenizer(_byte_decode)
    pieces = [detok.push(b) for b in text.encode()] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # the 4-byte emoji only appears once its last byte arrived
    assert "🙂" in pieces and pieces.count("") >= 3 + 2 * 3 + 2 * 1


def test_detokenizer_drops_a_truncated_character_at_the_end():
    detok = IncrementalDetokenizer(_byte_decode)
    out = "".join(detok.push(b) for b in "ok 🙂".encode()[:-1]) + detok.flush()
    assert out == "ok "


def test_detokenizer_decodes_in_context():
    # a decoder that renders a token differently after another (like leading-space markers)
    vocab = {1: "Hel", 2: "lo", 3: "▁world"}

    def decode(ids):
        return "".join(vocab[i] for i in ids).replace("▁", " ").lstrip()

    detok = IncrementalDetokenizer(decode)
    assert "".join(detok.push(i) for i in (1, 2, 3)) + detok.flush() == "Hello world"


def test_stop_matcher_cuts_at_the_stop_and_holds_possible_prefixes():
    stop = StopMatcher(["END", "\n\n"])
    assert stop.feed("abc E") == "abc "  # "E" may start END
    assert stop.feed("x") == "Ex"  # it did not
    assert stop.feed("yy\n") == "yy"
    assert stop.feed("\nzzz") == ""
    assert stop.stopped and stop.flush() == ""


def test_stop_matcher_across_pieces_and_flush():
    stop = StopMatcher(["STOP"])
    assert stop.feed("aST") == "a"
    assert stop.feed("O") == ""
    assert stop.flush() == "STO"
    stop = StopMatcher(["STOP"])
    assert stop.feed("xS") + stop.feed("TOPy") == "x" and stop.stopped


def test_chunker_first_chunk_at_once_then_by_interval_and_size():
    c = Chunker(Pace(0.005), max_tokens=3)
    c.add("a", 1)
    first = c.take_due(10.0)
    assert first is not None and (first.seq, first.text, first.token_count) == (0, "a", 1)
    c.add("b", 1)
    assert c.take_due(10.001) is None  # inside the interval
    c.add("", 1)  # a token with no text yet (half a character) counts but is not sent
    c.add("c", 1)
    out = c.take_due(10.002)  # 3 tokens pending: size wins over time
    assert out is not None and (out.seq, out.text, out.token_count) == (1, "bc", 3)
    c.add("d", 1)
    assert c.due_at() == 10.002 + 0.005
    assert c.take_due(10.0071) is not None


def test_chunker_sends_nothing_without_text():
    c = Chunker(Pace(0.005), 16)
    c.add("", 2)
    assert c.due_at() is None and c.take(1.0) is None


def test_scripted_engine_is_deterministic_and_ends_with_eos():
    from schemas.events import ChatMessage, GenerationParams

    engine = ScriptedEngine(token_rate=0)
    prompt = engine.prepare([ChatMessage("user", "hï")], GenerationParams(max_tokens=50))
    engine.add("a", prompt)
    ids = []
    while True:
        (tok,) = engine.step()
        if tok.eos:
            break
        ids.append(tok.token_id)
    assert engine.decode(ids) == "Echo: hï"


def test_generated_nul_becomes_the_replacement_character_before_chunking():
    detok = IncrementalDetokenizer(_byte_decode)
    out = "".join(detok.push(b) for b in b"a\x00b\x00") + detok.flush()
    assert out == "a\ufffdb\ufffd"  # Postgres text cannot hold U+0000: stream = history


def test_detokenizer_output_holds_no_nul_and_no_lone_surrogate():
    # a decode function that returns what no UTF-8 decoder does: cleaned all the same
    def odd_decode(ids):
        return "".join("\ud800" if i == 1 else "\udfff" if i == 2 else chr(i) for i in ids)

    detok = IncrementalDetokenizer(odd_decode)
    out = "".join(detok.push(i) for i in (65, 1, 0, 2, 66)) + detok.flush()
    assert out == "A\ufffd\ufffd\ufffdB"
    out.encode("utf-8")  # encodable, so the event can be written
    # and with byte tokens (how byte-level BPE splits text), for any byte stream
    rng = random.Random(12)
    for _ in range(300):
        stream = bytes(
            rng.choice((0, 0x41, 0xC3, 0xA9, 0xF0, 0x9F, 0x99, 0x82, 0xED, 0xA0)) for _ in range(40)
        )
        detok = IncrementalDetokenizer(_byte_decode)
        text = "".join(detok.push(b) for b in stream) + detok.flush()
        assert not any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in text)
        text.encode("utf-8")
