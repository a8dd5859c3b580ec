"""`digest` (a stable hash of a read model's content) and `status` (checkpoint vs log end)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import meilisearch
import psycopg

from infra.lag import projection_lags
from processors.pg_store import LIVE_SCHEMA, checked_schema
from processors.settings import ProcessorSettings
from schemas.resources import MESSAGES_INDEX

# Content columns only: no positions, no generated columns. Ordered by primary key. The
# durable content: what chat.conversations and chat.answers (kept forever) determine, so a
# rebuild after chat.completions' chunks expired has the same digest. Stream bookkeeping
# (the chunks a finished stream resumes from, `messages.last_seq`) is in STREAM_TABLES.
DIGEST_TABLES: dict[str, tuple[str, str]] = {
    "conversations": (
        "id, user_id, title, status, created_at, updated_at, last_request_id, title_at,"
        " last_request_at, current_request_id, current_at",
        "id",
    ),
    "messages": (
        "id, conversation_id, request_id, role, content, status, attempt, tokens,"
        " created_at, finished_at",
        "id",
    ),
    "completions": (
        "request_id, conversation_id, user_id, status, model, attempt, finish_reason, usage,"
        " ttft_ms, error, created_at, updated_at, parent_request_id, origin_request_id, branch",
        "request_id",
    ),
    "deleted_conversations": ("conversation_id, deleted_at", "conversation_id"),
}
STREAM_TABLES: dict[str, tuple[str, str]] = {
    "chunks": ("request_id, attempt, seq, text, token_count", "request_id, attempt, seq"),
    "held_chunks": ("request_id, attempt, seq, text, token_count", "request_id, attempt, seq"),
    "message_positions": ("id, last_seq", "id"),
}
_TABLE_OF = {"message_positions": "messages"}


def postgres_digest(
    settings: ProcessorSettings, schema: str = LIVE_SCHEMA, *, streams: bool = False
) -> dict[str, str]:
    """sha256 per table of its rows in key order, plus `all` over the tables.

    `streams` adds the stream bookkeeping (equal too, where no chunk has expired).
    """
    s = checked_schema(schema)
    out: dict[str, str] = {}
    tables = {**DIGEST_TABLES, **(STREAM_TABLES if streams else {})}
    with psycopg.connect(settings.postgres_url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        for name, (cols, key) in tables.items():
            table = _TABLE_OF.get(name, name)
            h = hashlib.sha256()
            with conn.cursor(name=f"digest_{name}") as cur:
                cur.execute(f"SELECT ({cols})::text FROM {s}.{table} t ORDER BY {key}")  # type: ignore[arg-type]
                for (row,) in cur:
                    h.update(row.encode() + b"\n")
            out[name] = h.hexdigest()
    out["all"] = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()
    return out


def search_documents(settings: ProcessorSettings, index: str | None = None) -> list[dict[str, Any]]:
    """Every document of the messages index, sorted by id."""
    client = meilisearch.Client(settings.meili_url or "", settings.meili_key, timeout=30)
    idx = client.index(index or settings.index_name(MESSAGES_INDEX))
    docs: list[dict[str, Any]] = []
    while True:
        page = idx.get_documents({"limit": 1000, "offset": len(docs)})
        batch = [dict(d) for d in page.results]
        docs += batch
        if len(batch) < 1000:
            break
    return sorted(docs, key=lambda d: str(d["id"]))


def search_digest(settings: ProcessorSettings) -> dict[str, str]:
    docs = search_documents(settings)
    body = json.dumps(docs, sort_keys=True, default=str).encode()
    return {"documents": str(len(docs)), "all": hashlib.sha256(body).hexdigest()}


def status_rows(settings: ProcessorSettings) -> list[dict[str, Any]]:
    """Per projection and partition: stored checkpoint, log end and the lag between."""
    return [
        {
            "projection": r.projection,
            "topic": r.topic,
            "partition": r.partition,
            "checkpoint": r.checkpoint,
            "end": r.log_end,
            "lag": r.lag,
        }
        for r in projection_lags(settings)
    ]
