"""The SSE wire format (COMMON brief): `event:`, optional `id:`, one `data:` JSON line."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

from query_api.assembler import Out

PING = b": ping\n\n"


def frame(out: Out) -> bytes:
    if out.wire:
        return out.wire
    head = f"event: {out.event}\n" + (f"id: {out.id}\n" if out.id is not None else "")
    return (head + "data: " + json.dumps(out.data, separators=(", ", ": ")) + "\n\n").encode()


def error_frame(message: str, code: str, type_: str = "server_error") -> bytes:
    data: dict[str, Any] = {
        "error": {"message": message, "type": type_, "code": code, "param": None}
    }
    return frame(Out("error", None, data))


def chunk_frame(request_id: str, attempt: int, seq: int, text: str, token_count: int) -> bytes:
    """A chunk event's frame, byte for byte what `frame` makes of the assembler's `Out`.

    The hub's per-chunk hot path: formatted directly (only the strings go through JSON's
    C escaper, exactly as `json.dumps` escapes them) instead of a dict through `dumps`.
    """
    return (
        f"event: chunk\nid: {attempt:d}:{seq:d}\ndata: "
        f'{{"request_id": {_quote(request_id)}, "attempt": {attempt:d}, "seq": {seq:d}, '
        f'"text": {_quote(text)}, "token_count": {token_count:d}}}\n\n'
    ).encode()
