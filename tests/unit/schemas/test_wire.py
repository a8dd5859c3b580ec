"""`read_token_chunk_v1` reads exactly what `encode` writes, and refuses everything else."""

from __future__ import annotations

import random

import pytest

from schemas import TokenChunk, decode, encode
from schemas.wire import TOKEN_CHUNK_V1_HEADERS, read_token_chunk_v1

TEXTS = ["", "a", "héllo wörld", "日本語のテキスト", 'emoji 🙂 and \n newlines "quoted"', "x" * 300]


def _chunks() -> list[TokenChunk]:
    rng = random.Random(7)
    out = []
    for i in range(300):
        out.append(
            TokenChunk(
                request_id=f"chatcmpl-{rng.getrandbits(128):032x}",
                conversation_id=f"conv-{i}" * rng.randint(1, 30),
                attempt=rng.choice([0, 1, 2, 63, 64, 1000, 2**31 - 1]),
                seq=rng.choice([0, 1, 63, 64, 127, 128, 8191, 8192, 2**31 - 1]),
                text=rng.choice(TEXTS) * rng.randint(1, 3),
                token_count=rng.randint(0, 500),
                traceparent=rng.choice(
                    [None, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
                ),
            )
        )
    return out


def test_it_reads_what_encode_writes_exactly_as_decode_does() -> None:
    for chunk in _chunks():
        value, headers = encode(chunk)
        assert tuple(headers) == TOKEN_CHUNK_V1_HEADERS
        fields = read_token_chunk_v1(value)
        slow = decode(value, headers)
        assert isinstance(slow, TokenChunk)
        assert fields.occurred_at_ms == round(slow.occurred_at.timestamp() * 1000)
        assert fields[1:] == (
            slow.request_id,
            slow.conversation_id,
            slow.attempt,
            slow.seq,
            slow.text,
            slow.token_count,
        ), chunk


def test_anything_but_exactly_one_record_is_refused() -> None:
    value, _ = encode(
        TokenChunk(request_id="r", conversation_id="c", attempt=1, seq=2, text="hé", token_count=1)
    )
    for cut in range(len(value)):  # every truncation
        with pytest.raises(ValueError):
            read_token_chunk_v1(value[:cut])
    with pytest.raises(ValueError):
        read_token_chunk_v1(value + b"\x00")  # trailing bytes
    with pytest.raises(ValueError):
        read_token_chunk_v1(value[:-1] + b"\x04")  # union branch 2 does not exist
    bad_utf8 = value.replace("hé".encode(), b"h\xff\xfe"[:3])
    with pytest.raises(ValueError):
        read_token_chunk_v1(bad_utf8)
    with pytest.raises(ValueError):
        read_token_chunk_v1(b"\xff" * 12)  # an endless varint
