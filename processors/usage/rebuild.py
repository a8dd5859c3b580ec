"""`chatlog replay --projection usage`: rebuild just the meter, then swap its rows in.

It folds the whole log into a private schema (`chatlog_usage_next`: only the meter's
table and checkpoints) while the live meter keeps counting; near the end it takes the
meter's advisory lock exclusively (the live meter's batches wait), folds up to the live
checkpoints, and in one transaction replaces the live rows and checkpoints with its own.
The other read models are untouched. `digest` hashes the rows so a replay can be checked
against the live meter.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg

from processors.checkpoints import LOCK_KEYS, read_checkpoints
from processors.coverage import check_log_start
from processors.pg_store import LIVE_SCHEMA, checked_schema
from processors.rebuild import print_progress
from processors.runner import Runner
from processors.settings import ProcessorSettings
from processors.usage.projection import NAME, UsageProjection

NEXT_SCHEMA = "chatlog_usage_next"
TP = tuple[str, int]
_CONTENT = "request_id, user_id, model, day, attempt, outcome, prompt_tokens, completion_tokens"


async def rebuild_usage(settings: ProcessorSettings, *, quiet: bool = False) -> int:
    """Refold the meter from the log's beginning and switch; returns the events folded."""
    await check_log_start(settings)
    async with await psycopg.AsyncConnection.connect(settings.postgres_url, autocommit=True) as c:
        await c.execute(f"DROP SCHEMA IF EXISTS {NEXT_SCHEMA} CASCADE")
        await c.execute(f"CREATE SCHEMA {NEXT_SCHEMA}")
        for table in ("projection_checkpoints", "usage_requests"):
            await c.execute(
                f"CREATE TABLE {NEXT_SCHEMA}.{table} (LIKE {LIVE_SCHEMA}.{table} INCLUDING ALL)"
            )
    projection = UsageProjection(settings, schema=NEXT_SCHEMA)
    switch = await psycopg.AsyncConnection.connect(settings.postgres_url)  # one transaction

    async def near_end() -> dict[TP, int]:
        await switch.execute("SET LOCAL lock_timeout = '60s'")
        await switch.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEYS[NAME],))
        return await read_checkpoints(switch, NAME)

    runner = Runner(
        settings,
        projection,
        group=None,
        stop_at_lag=settings.swap_max_lag,
        on_progress=None if quiet else print_progress("usage rebuild"),
        on_near_end=near_end,
    )
    try:
        await runner.run()
        live, nxt = LIVE_SCHEMA, NEXT_SCHEMA
        await switch.execute(f"DELETE FROM {live}.usage_requests")
        await switch.execute(
            f"INSERT INTO {live}.usage_requests SELECT * FROM {nxt}.usage_requests"
        )
        await switch.execute(f"DELETE FROM {live}.projection_checkpoints WHERE projection = %s",
                             (NAME,))  # fmt: skip
        await switch.execute(
            f"INSERT INTO {live}.projection_checkpoints SELECT * FROM {nxt}.projection_checkpoints"
            f" WHERE projection = %s",
            (NAME,),
        )
        await switch.commit()
    finally:
        await projection.close()
        await switch.close()
    async with await psycopg.AsyncConnection.connect(settings.postgres_url, autocommit=True) as c:
        await c.execute(f"DROP SCHEMA IF EXISTS {NEXT_SCHEMA} CASCADE")
    return runner.folded


def usage_digest(settings: ProcessorSettings, schema: str = LIVE_SCHEMA) -> dict[str, Any]:
    """sha256 of the meter's rows (content columns, request order) and their count."""
    s = checked_schema(schema)
    h = hashlib.sha256()
    n = 0
    sql = f"SELECT ({_CONTENT})::text FROM {s}.usage_requests ORDER BY request_id"
    with psycopg.connect(settings.postgres_url) as conn, conn.cursor(name="digest_usage") as cur:
        cur.execute(sql)  # type: ignore[arg-type]  # our own SQL, schema name checked
        for (row,) in cur:
            h.update(row.encode() + b"\n")
            n += 1
    return {"usage_requests": str(n), "all": h.hexdigest()}
