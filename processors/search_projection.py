"""The search projection: finished messages and conversation titles -> Meilisearch.

The log says *when* a document changes (a prompt, a finish, a rename, a delete); the text
comes from the Postgres read model, once the Postgres projection's checkpoint has passed
the same offsets. So the chunk-folding rules live in one place (`fold`), and a document is
always the read model's current row, whatever order or how often events are replayed.
The search checkpoint is written only after every Meilisearch task of the batch succeeded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime
from typing import Any

import meilisearch
import psycopg

from processors.checkpoints import fence, read_checkpoints, write_checkpoints
from processors.errors import SearchUnavailable
from processors.pg_session import PgSession
from processors.pg_store import LIVE_SCHEMA
from processors.settings import ProcessorSettings
from schemas.events import (
    CompletionFailed,
    CompletionFinished,
    ConversationDeleted,
    ConversationRenamed,
    Event,
    PromptSubmitted,
)
from schemas.resources import MESSAGES_INDEX, search_index_spec

log = logging.getLogger(__name__)
TP = tuple[str, int]
NAME = "search"
TASK_TIMEOUT_MS = 120_000
POSTGRES_WAIT_LOG_S = 10.0


def ensure_index(client: meilisearch.Client, name: str) -> None:
    """Create `name` with the messages index settings (idempotent), waiting for both tasks."""
    spec = search_index_spec(MESSAGES_INDEX)
    task = client.create_index(name, {"primaryKey": spec["primaryKey"]})
    client.wait_for_task(task.task_uid, timeout_in_ms=TASK_TIMEOUT_MS)  # fails if it exists
    task = client.index(name).update_settings(spec["settings"])
    done = client.wait_for_task(task.task_uid, timeout_in_ms=TASK_TIMEOUT_MS)
    if done.status != "succeeded":
        raise RuntimeError(f"meilisearch rejected settings for {name}: {done.error}")


def document(row: tuple[Any, ...]) -> dict[str, Any]:
    """A messages row (joined with its conversation) as a search document."""
    mid, conversation_id, request_id, user_id, role, content, title, created_at = row
    created: datetime = created_at
    return {
        "id": mid.replace(":", "-"),  # Meilisearch ids allow [A-Za-z0-9_-] only
        "conversation_id": conversation_id,
        "request_id": request_id,
        "user_id": user_id,
        "role": role,
        "content": content,
        "title": title,
        "created_at": int(created.timestamp() * 1000),
    }


def _quoted(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


class SearchProjection:
    """One batch = wait for Postgres to have it, read docs, index/delete, await the tasks."""

    name = NAME

    def __init__(
        self,
        settings: ProcessorSettings,
        *,
        index: str | None = None,
        checkpoint_name: str = NAME,
    ) -> None:
        self.settings = settings
        self.index_name = index or settings.index_name(MESSAGES_INDEX)
        self.checkpoint_name = checkpoint_name
        self.batch_max_events = settings.search_batch_max_events
        self.batch_wait_ms = settings.search_batch_wait_ms
        # Chunks and starts never change a document: skip them undecoded (~90% of the log).
        self.event_types: frozenset[str] | None = frozenset(
            t.event_type
            for t in (
                PromptSubmitted,
                CompletionFinished,
                CompletionFailed,
                ConversationRenamed,
                ConversationDeleted,
            )
        )
        self.client = meilisearch.Client(settings.meili_url or "", settings.meili_key, timeout=30)
        self._session = PgSession(settings.postgres_url)

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The projection's connection, reopened after an outage."""
        return await self._session.connection()

    async def stored_positions(self) -> dict[TP, int]:
        return await read_checkpoints(await self.connection(), self.checkpoint_name)

    async def apply(
        self, events: list[Event], positions: dict[TP, int], expected: dict[TP, int | None]
    ) -> None:
        conn = await self.connection()
        await self._wait_for_postgres(conn, positions)
        deleted = sorted({e.conversation_id for e in events if isinstance(e, ConversationDeleted)})
        renamed = sorted({e.conversation_id for e in events if isinstance(e, ConversationRenamed)})
        requests = sorted(
            {
                e.request_id
                for e in events
                if isinstance(e, PromptSubmitted | CompletionFinished | CompletionFailed)
            }
        )
        async with conn.transaction():
            await fence(conn, self.checkpoint_name, expected)
            docs = await self._documents(conn, requests, renamed) if requests or renamed else []
            tasks = []
            index = self.client.index(self.index_name)
            if deleted:
                flt = f"conversation_id IN {_quoted(deleted)}"
                tasks.append(await asyncio.to_thread(index.delete_documents, filter=flt))
            if docs:
                tasks.append(await asyncio.to_thread(index.add_documents, docs, "id"))
            for task in tasks:
                await self.succeeded(task.task_uid)
            await write_checkpoints(conn, self.checkpoint_name, positions)

    async def succeeded(self, task_uid: int) -> None:
        try:
            done = await asyncio.to_thread(self.client.wait_for_task, task_uid, TASK_TIMEOUT_MS, 20)
        except meilisearch.errors.MeilisearchTimeoutError as exc:
            raise SearchUnavailable(f"task {task_uid} not done in time") from exc
        if done.status != "succeeded":
            raise RuntimeError(f"meilisearch task {task_uid} {done.status}: {done.error}")

    async def _documents(
        self, conn: psycopg.AsyncConnection[Any], requests: list[str], renamed: list[str]
    ) -> list[dict[str, Any]]:
        s = LIVE_SCHEMA
        cur = await conn.execute(
            f"SELECT m.id, m.conversation_id, m.request_id, c.user_id, m.role, m.content,"
            f" c.title, m.created_at FROM {s}.messages m"
            f" JOIN {s}.conversations c ON c.id = m.conversation_id"
            f" LEFT JOIN {s}.completions r ON r.request_id = m.request_id"
            f" WHERE (m.request_id = ANY(%s) OR m.conversation_id = ANY(%s))"
            f"   AND (m.role = 'user' OR m.status = 'finished')"
            # a regenerate's question (and a root's context) repeats its origin's: skip it
            f"   AND (r.branch IS DISTINCT FROM 'regenerate' OR m.id = m.request_id || ':assistant')",
            (requests, renamed),
        )
        return [document(r) for r in await cur.fetchall()]

    async def _wait_for_postgres(
        self, conn: psycopg.AsyncConnection[Any], positions: dict[TP, int]
    ) -> None:
        """Documents come from the read model: wait until it has folded these offsets."""
        started = logged = time.monotonic()
        while True:
            folded = await read_checkpoints(conn, "postgres")
            if all(folded.get(tp, 0) >= pos for tp, pos in positions.items()):
                return
            if time.monotonic() - logged > POSTGRES_WAIT_LOG_S:
                logged = time.monotonic()
                log.warning("search: waiting %.0fs for the postgres projection",
                            logged - started)  # fmt: skip
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self._session.close()
