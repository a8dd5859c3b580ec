"""Hand-written Avro for the two hottest records: TokenChunk v1 read, PromptSubmitted v1 written.

Why: fastavro's per-call set-up dominates for records this small. The query API's hub
reads every chunk of every live generation (`codec.decode_if`, with its timezone-aware
`datetime` and event object, ~6 µs per chunk; `read_token_chunk_v1` ~2 µs), and the
command API writes one PromptSubmitted per accepted prompt (`encode` ~15 µs;
`encode_fast` ~6 µs).

Both handle exactly one schema version, byte for byte as fastavro (schemaless Avro:
zig-zag varints, length-prefixed UTF-8 strings, unions as branch index then value); tests
compare them with `codec` on many events. Anything else goes through `codec`: the reader
raises ValueError (another shape, truncated or trailing bytes, bad UTF-8, a bad union
branch) and its caller falls back to `codec.decode_if`; the writer hands any other event
to `codec.encode`. Either way a record decodes, encodes or fails exactly as before.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any, NamedTuple

from schemas.codec import (
    EVENT_TYPE_HEADER,
    SCHEMA_VERSION_HEADER,
    Headers,
    current_version,
    encode,
)
from schemas.events import Event

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


def encode_fast(event: Event) -> tuple[bytes, Headers]:
    """`encode(event)`, byte for byte, and for a PromptSubmitted in a fraction of the time.

    The command API encodes one PromptSubmitted per accepted prompt; fastavro spends most
    of its ~10 us per call on set-up, not on the few bytes. Schema v1's fields are written
    here by hand, in order (strings and longs as Avro's varints, doubles little-endian,
    unions as the branch index then the value, arrays as one block). Anything else (another
    event type or schema version, a naive timestamp, a value of a type v1 does not expect)
    goes through `encode`, which encodes or raises exactly as always. Tests compare the two
    on many events.
    """
    if event.event_type != "PromptSubmitted" or current_version("PromptSubmitted") != 1:
        return encode(event)
    e: Any = event
    p = e.params
    if (
        e.occurred_at.tzinfo is None
        or type(p.max_tokens) is not int
        or not -(2**31) <= p.max_tokens < 2**31
        or type(p.temperature) is not float
        or type(p.top_p) is not float
        or (p.seed is not None and (type(p.seed) is not int or not -(2**63) <= p.seed < 2**63))
    ):
        return encode(event)
    out = bytearray()
    try:
        put_string(out, e.event_id)
        delta = e.occurred_at - _EPOCH
        put_long(out, (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000)
        put_string(out, e.request_id)
        put_string(out, e.conversation_id)
        put_string(out, e.user_id)
        put_string(out, e.model)
        if e.messages:
            put_long(out, len(e.messages))
            for m in e.messages:
                put_string(out, m.role)
                put_string(out, m.content)
        out.append(0)  # end of the array
        put_long(out, p.max_tokens)
        out += _DOUBLE.pack(p.temperature)
        out += _DOUBLE.pack(p.top_p)
        if p.stop:
            put_long(out, len(p.stop))
            for stop in p.stop:
                put_string(out, stop)
        out.append(0)
        if p.seed is None:
            out.append(0)
        else:
            out.append(2)
            put_long(out, p.seed)
        for optional in (e.parent_request_id, e.idempotency_key, e.traceparent):
            if optional is None:
                out.append(0)
            else:
                out.append(2)
                put_string(out, optional)
    except (AttributeError, TypeError, ValueError):  # not a (valid) str where v1 has one
        return encode(event)
    return bytes(out), [(EVENT_TYPE_HEADER, b"PromptSubmitted"), (SCHEMA_VERSION_HEADER, b"1")]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct("<d")


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
