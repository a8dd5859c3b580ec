"""The usage projection: chat.conversations + chat.answers -> `chatlog.usage_requests`.

Why the Postgres-checkpoint pattern (`processors.runner`) and not a faust agent with
tables: the meter's rows and its position commit in one transaction, so a kill at any
point loses nothing and counts nothing twice, and the quota reads these rows from Postgres
anyway. The faust-table meter was built and SIGKILLed mid-run on the real broker
(`processors.usage.faust_meter`, `docs/usage_faust.md`): it lost requests under
at_least_once and exactly_once alike.
Why chat.answers and not chat.completions: it holds only the finals and keeps them forever
(chat.completions' records expire after days, and its chunks would be read only to be
skipped), and it is keyed by conversation like chat.conversations.
"""

from __future__ import annotations

from typing import Any

import psycopg

from processors.checkpoints import fence, read_checkpoints, write_checkpoints
from processors.pg_session import PgSession
from processors.pg_store import LIVE_SCHEMA, checked_schema
from processors.settings import ProcessorSettings
from processors.usage.fold import EVENT_TYPES, UsageRow, fold_usage
from schemas.events import Event

TP = tuple[str, int]
NAME = "usage"
AConn = psycopg.AsyncConnection[Any]
_COLUMNS = "request_id, user_id, model, day, attempt, outcome, prompt_tokens, completion_tokens"


class UsageProjection:
    """One batch = load the touched requests' rows, fold, upsert them + checkpoints, commit."""

    name = NAME

    def __init__(self, settings: ProcessorSettings, schema: str = LIVE_SCHEMA) -> None:
        self.settings = settings
        self.schema = checked_schema(schema)
        self.batch_max_events = settings.batch_max_events
        self.batch_wait_ms = settings.batch_wait_ms
        self.event_types: frozenset[str] | None = EVENT_TYPES
        t = settings.topics
        self.topics = [t.conversations, t.answers]
        self._session = PgSession(settings.postgres_url)

    async def stored_positions(self) -> dict[TP, int]:
        return await read_checkpoints(await self._session.connection(), NAME, self.schema)

    async def apply(
        self, events: list[Event], positions: dict[TP, int], expected: dict[TP, int | None]
    ) -> None:
        conn = await self._session.connection()
        ids = sorted({rid for e in events if (rid := getattr(e, "request_id", None))})
        async with conn.transaction():
            await fence(conn, NAME, expected, self.schema, lock=self.schema == LIVE_SCHEMA)
            if ids:
                rows = await self._load(conn, ids)
                fold_usage(rows, events)
                await self._write(conn, [r for r in rows.values() if r.dirty])
            await write_checkpoints(conn, NAME, positions, self.schema)

    async def _load(self, conn: AConn, ids: list[str]) -> dict[str, UsageRow]:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM {self.schema}.usage_requests WHERE request_id = ANY(%s)",
            (ids,),
        )
        return {r[0]: UsageRow(*r) for r in await cur.fetchall()}

    async def _write(self, conn: AConn, rows: list[UsageRow]) -> None:
        await upsert_rows(conn, rows, self.schema)

    async def close(self) -> None:
        await self._session.close()


async def upsert_rows(conn: AConn, rows: list[UsageRow], schema: str = LIVE_SCHEMA) -> None:
    """Write `rows` over their `usage_requests` rows: an idempotent upsert, so re-writing a
    row after a redelivery changes nothing (the faust meter relies on it too)."""
    if not rows:
        return
    cols = list(zip(*((r.request_id, r.user_id, r.model, r.day, r.attempt, r.outcome,
                       r.prompt_tokens, r.completion_tokens) for r in rows), strict=True))  # fmt: skip
    await conn.execute(
        f"INSERT INTO {checked_schema(schema)}.usage_requests ({_COLUMNS}, updated_at)"
        f" SELECT *, now() FROM unnest(%s::text[], %s::text[], %s::text[], %s::date[],"
        f" %s::int[], %s::text[], %s::int[], %s::int[])"
        f" ON CONFLICT (request_id) DO UPDATE SET user_id = EXCLUDED.user_id,"
        f" model = EXCLUDED.model, day = EXCLUDED.day, attempt = EXCLUDED.attempt,"
        f" outcome = EXCLUDED.outcome, prompt_tokens = EXCLUDED.prompt_tokens,"
        f" completion_tokens = EXCLUDED.completion_tokens, updated_at = now()",
        [list(c) for c in cols],
    )
