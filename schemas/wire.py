"""Hand-written Avro for the hottest record the query API reads: TokenChunk v1.

Why: fastavro's per-call set-up dominates for records this small. The query API's hub
reads every chunk of every live generation (`codec.decode_if`, with its timezone-aware
`datetime` and event object, ~6 µs per chunk; `read_token_chunk_v1` ~2 µs). (A writer for
PromptSubmitted was removed in #12: its gain was under 1.3x; the command API uses
`codec.encode`.) `put_long` / `put_string` stay for the benches that build chunk records.

The reader handles exactly one schema version, byte for byte as fastavro (schemaless Avro:
zig-zag varints, length-prefixed UTF-8 strings, unions as branch index then value); tests
compare it with `codec` on many events. Anything else goes through `codec`: the reader
raises ValueError (another shape, truncated or trailing bytes, bad UTF-8, a bad union
branch) and its caller falls back to `codec.decode_if`.
"""

from __future__ import annotations

from typing import NamedTuple

from schemas.codec import EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER

# The headers `codec.encode` writes on a TokenChunk v1 record, in its order.
TOKEN_CHUNK_V1_HEADERS = ((EVENT_TYPE_HEADER, b"TokenChunk"), (SCHEMA_VERSION_HEADER, b"1"))


class ChunkFields(NamedTuple):
    """The fields a reader of live chunks needs (event_id and traceparent are skipped)."""

    occurred_at_ms: int
    request_id: str
    conversation_id: str
    attempt: int
    seq: int
    text: str
    token_count: int


def _long(buf: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint at `pos`: (value, next position). IndexError when truncated."""
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos
    n, shift = b & 0x7F, 7
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _str(buf: bytes, pos: int) -> tuple[str, int]:
    size, pos = _long(buf, pos)
    end = pos + size
    if size < 0 or end > len(buf):
        raise ValueError("string runs past the record")
    return buf[pos:end].decode(), end


def _skip_str(buf: bytes, pos: int) -> int:
    size, pos = _long(buf, pos)
    end = pos + size
    if size < 0 or end > len(buf):
        raise ValueError("string runs past the record")
    return end


def read_token_chunk_v1(buf: bytes) -> ChunkFields:
    """The fields of a TokenChunk v1 body; ValueError if it is not exactly one."""
    try:
        pos = _skip_str(buf, 0)  # event_id
        occurred_at, pos = _long(buf, pos)
        request_id, pos = _str(buf, pos)
        conversation_id, pos = _str(buf, pos)
        attempt, pos = _long(buf, pos)
        seq, pos = _long(buf, pos)
        text, pos = _str(buf, pos)
        token_count, pos = _long(buf, pos)
        branch, pos = _long(buf, pos)  # traceparent: ["null", "string"]
        if branch == 1:
            pos = _skip_str(buf, pos)
        elif branch != 0:
            raise ValueError(f"traceparent union branch {branch}")
    except IndexError:
        raise ValueError("truncated TokenChunk") from None
    if pos != len(buf):
        raise ValueError("trailing bytes after a TokenChunk")
    return ChunkFields(occurred_at, request_id, conversation_id, attempt, seq, text, token_count)


def put_long(out: bytearray, n: int) -> None:
    """Append an Avro long (or int): zig-zag, then 7-bit groups, low first."""
    n = (n << 1) ^ (n >> 63)  # zig-zag: small magnitudes, small varints
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def put_string(out: bytearray, text: str) -> None:
    """Append an Avro string: its UTF-8 length as a long, then the bytes."""
    if type(text) is not str:
        raise TypeError(text)
    data = text.encode()
    put_long(out, len(data))
    out += data
