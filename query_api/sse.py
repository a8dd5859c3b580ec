"""The SSE wire format (COMMON brief): `event:`, optional `id:`, one `data:` JSON line."""

from __future__ import annotations

import json
from typing import Any

from query_api.assembler import Out

PING = b": ping\n\n"


def frame(out: Out) -> bytes:
    head = f"event: {out.event}\n" + (f"id: {out.id}\n" if out.id is not None else "")
    return (head + "data: " + json.dumps(out.data, separators=(", ", ": ")) + "\n\n").encode()


def error_frame(message: str, code: str, type_: str = "server_error") -> bytes:
    data: dict[str, Any] = {
        "error": {"message": message, "type": type_, "code": code, "param": None}
    }
    return frame(Out("error", None, data))
