"""The Postgres projection: chat.conversations, chat.completions, chat.answers -> `chatlog`."""

from __future__ import annotations

from typing import Any

import psycopg

from processors.checkpoints import fence, read_checkpoints, write_checkpoints
from processors.fold import fold_batch
from processors.pg_session import PgSession
from processors.pg_store import LIVE_SCHEMA, load_state, write_state
from processors.scrub import scrub
from processors.settings import ProcessorSettings
from schemas.events import (
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    Event,
    PromptSubmitted,
    TokenChunk,
)

TP = tuple[str, int]
NAME = "postgres"


class PostgresProjection:
    """One batch = load touched rows, fold in memory, write rows + checkpoints, commit."""

    name = NAME

    def __init__(self, settings: ProcessorSettings, schema: str = LIVE_SCHEMA) -> None:
        self.settings = settings
        self.schema = schema
        self.batch_max_events = settings.batch_max_events
        self.batch_wait_ms = settings.batch_wait_ms
        self.event_types: frozenset[str] | None = None
        self._session = PgSession(settings.postgres_url)

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The projection's connection, reopened after an outage."""
        return await self._session.connection()

    async def stored_positions(self) -> dict[TP, int]:
        return await read_checkpoints(await self.connection(), NAME, self.schema)

    async def apply(
        self, events: list[Event], positions: dict[TP, int], expected: dict[TP, int | None]
    ) -> None:
        conn = await self.connection()
        events = [scrub(e) for e in events]  # U+0000 -> U+FFFD: stored, never dead-lettered
        request_ids = sorted(
            {
                e.request_id
                for e in events
                if isinstance(
                    e,
                    PromptSubmitted
                    | CompletionStarted
                    | TokenChunk
                    | CompletionFinished
                    | CompletionFailed,
                )
            }
        )
        conversation_ids = sorted({e.key for e in events})
        async with conn.transaction():
            await fence(conn, NAME, expected, self.schema, lock=self.schema == LIVE_SCHEMA)
            if events:
                state = await load_state(conn, self.schema, request_ids, conversation_ids)
                fold_batch(state, events)
                await write_state(conn, self.schema, state)
            await write_checkpoints(conn, NAME, positions, self.schema)

    async def close(self) -> None:
        await self._session.close()
