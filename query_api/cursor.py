"""Opaque pagination cursors: base64url of a small JSON list.

Keyset cursors carry the last row's (timestamp, id); search cursors carry an offset.
Clients must treat them as opaque; a malformed one is a 400, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from infra.http import BadRequest, unstorable


def _encode(payload: list[Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("Malformed cursor.", param="cursor", code="invalid_cursor") from exc
    if not isinstance(payload, list):
        raise BadRequest("Malformed cursor.", param="cursor", code="invalid_cursor")
    return payload


def encode_keyset(at: datetime, row_id: str) -> str:
    """Cursor pointing just after the row (at, row_id) in a newest-first listing."""
    return _encode(["k", at.isoformat(), row_id])


def decode_keyset(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    payload = _decode(cursor)
    try:
        tag, at, row_id = payload
        if tag != "k" or not isinstance(row_id, str) or unstorable(row_id):
            raise ValueError(tag)
        return datetime.fromisoformat(at), row_id
    except (ValueError, TypeError) as exc:
        raise BadRequest("Malformed cursor.", param="cursor", code="invalid_cursor") from exc


# Far past any page a search backend serves (Meilisearch stops at maxTotalHits, 1000 by
# default); a larger offset in a forged cursor failed Meilisearch's checks (a 503).
MAX_OFFSET = 100_000


def encode_offset(offset: int) -> str:
    return _encode(["o", offset])


def decode_offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    payload = _decode(cursor)
    if (
        len(payload) != 2
        or payload[0] != "o"
        or type(payload[1]) is not int  # not a bool either
        or not 0 <= payload[1] <= MAX_OFFSET
    ):
        raise BadRequest("Malformed cursor.", param="cursor", code="invalid_cursor")
    return payload[1]
