"""Replay and zero-downtime rebuild of a projection.

Postgres: fold the whole log into a fresh schema `chatlog_next` (same DDL) while the live
`chatlog` keeps serving; when within `swap_max_lag` of the log end, switch in ONE
transaction (`ALTER SCHEMA chatlog RENAME TO chatlog_old; ALTER SCHEMA chatlog_next RENAME
TO chatlog`), holding the projections' advisory locks so no live batch interleaves; then
drop the old schema. Readers name `chatlog.messages`: a statement before the switch reads
the old tables, one after reads the new, none sees an empty or partial model. The live
projector's next batch finds different checkpoints (its fence) and seeks to them.

Search: index into `<messages>_next`, then Meilisearch's atomic index swap, then move the
rebuild's checkpoints onto the live name in the same Postgres transaction.

`--from-timestamp T` rewinds the live checkpoints to the first offsets at or after T
instead (an in-place replay; the folds are idempotent, and the idle live projector sees
its checkpoints moved within a second and seeks there; a busy one is fenced at its next
batch).

A rebuild refuses to switch (RebuildRefused) when the log it folds lost its beginning: see
`processors.coverage`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from datetime import datetime
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from processors.checkpoints import LOCK_KEYS, read_checkpoints, write_checkpoints
from processors.coverage import check_log_start, check_outcomes
from processors.pg_projection import PostgresProjection
from processors.pg_store import LIVE_SCHEMA
from processors.projection import Progress, projection_topics
from processors.runner import Runner
from processors.search_projection import SearchProjection, ensure_index
from processors.settings import ProcessorSettings
from schemas.resources import MESSAGES_INDEX, read_model_ddl

log = logging.getLogger(__name__)
AConn = psycopg.AsyncConnection[Any]
TP = tuple[str, int]
NEXT_SCHEMA = "chatlog_next"
OLD_SCHEMA = "chatlog_old"


def schema_ddl(schema: str) -> list[str]:
    """The read-model DDL with every `chatlog` schema reference pointed at `schema`."""
    out = []
    for _name, sql in read_model_ddl():
        sql = re.sub(r"\bchatlog\.", f"{schema}.", sql)
        out.append(re.sub(r"SCHEMA IF NOT EXISTS chatlog\b", f"SCHEMA IF NOT EXISTS {schema}", sql))
    return out


def print_progress(label: str) -> Any:
    def show(p: Progress) -> None:
        print(  # noqa: T201 - the operator's progress line
            f"\r{label}: {p.events:>10,} events  {p.rate:>9,.0f} events/s  lag {p.lag:>9,}",
            end="",
            file=sys.stderr,
            flush=True,
        )

    return show


async def _lock_live(conn: AConn, *projections: str) -> None:
    """Take the live projections' advisory locks exclusively: no live batch runs after."""
    await conn.execute("SET LOCAL lock_timeout = '60s'")
    for name in projections:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEYS[name],))


async def rebuild_postgres(settings: ProcessorSettings, *, quiet: bool = False) -> int:
    """Rebuild the Postgres read model from the beginning of the log, then switch.

    Raises RebuildRefused (and keeps the live model) when the log lost part of its past.
    """
    log_start = await check_log_start(settings)
    async with await psycopg.AsyncConnection.connect(settings.postgres_url, autocommit=True) as c:
        await c.execute(f"DROP SCHEMA IF EXISTS {NEXT_SCHEMA} CASCADE")
        for sql in schema_ddl(NEXT_SCHEMA):
            await c.execute(sql)  # type: ignore[arg-type]  # our own DDL files
    projection = PostgresProjection(settings, schema=NEXT_SCHEMA)
    switch = await psycopg.AsyncConnection.connect(settings.postgres_url)  # one transaction

    async def near_end() -> dict[TP, int]:
        # From here until the commit the live projector waits; the rebuild folds on to
        # (at least) where the live one stopped, so readers never go back in time.
        await _lock_live(switch, "postgres", "search", "usage")
        return await read_checkpoints(switch, "postgres")

    runner = Runner(
        settings,
        projection,
        group=None,
        stop_at_lag=settings.swap_max_lag,
        on_progress=None if quiet else print_progress("postgres rebuild"),
        on_near_end=near_end,
    )
    try:
        await runner.run()
        await check_outcomes(switch, NEXT_SCHEMA, log_start)  # raising rolls the switch back
        await switch.execute(
            f"INSERT INTO {NEXT_SCHEMA}.projection_checkpoints"
            f" SELECT * FROM {LIVE_SCHEMA}.projection_checkpoints"
            f" WHERE projection <> 'postgres' ON CONFLICT DO NOTHING"
        )
        # The usage meter's rows go with its checkpoints (it is not rebuilt here).
        await switch.execute(
            f"INSERT INTO {NEXT_SCHEMA}.usage_requests SELECT * FROM {LIVE_SCHEMA}.usage_requests"
        )
        await switch.execute(f"DROP SCHEMA IF EXISTS {OLD_SCHEMA} CASCADE")
        await switch.execute(f"ALTER SCHEMA {LIVE_SCHEMA} RENAME TO {OLD_SCHEMA}")
        await switch.execute(f"ALTER SCHEMA {NEXT_SCHEMA} RENAME TO {LIVE_SCHEMA}")
        await switch.commit()
    finally:
        await projection.close()
        await switch.close()
    await drop_old_schema(settings)
    return runner.folded


async def drop_old_schema(settings: ProcessorSettings) -> None:
    """Drop the switched-out schema once readers still on its tables let go."""
    async with await psycopg.AsyncConnection.connect(settings.postgres_url, autocommit=True) as c:
        await c.execute("SET lock_timeout = '1s'")
        for _ in range(120):
            try:
                await c.execute(f"DROP SCHEMA IF EXISTS {OLD_SCHEMA} CASCADE")
                return
            except psycopg.errors.LockNotAvailable:
                await asyncio.sleep(0.5)
    log.warning("old schema %s still in use; it is dropped by the next rebuild", OLD_SCHEMA)


async def rebuild_search(settings: ProcessorSettings, *, quiet: bool = False) -> int:
    """Rebuild the search index from the beginning of the log into a new index, swap.

    Its documents come from the Postgres read model; the log must still start at its
    beginning (RebuildRefused otherwise), since its events say which documents to write.
    """
    await check_log_start(settings)
    live = settings.index_name(MESSAGES_INDEX)
    nxt = f"{live}_next"
    projection = SearchProjection(settings, index=nxt, checkpoint_name="search_next")
    client = projection.client
    await asyncio.to_thread(_drop_index, client, nxt)
    await asyncio.to_thread(ensure_index, client, nxt)
    await asyncio.to_thread(ensure_index, client, live)
    conn = await projection.connection()
    await conn.execute(
        f"DELETE FROM {LIVE_SCHEMA}.projection_checkpoints WHERE projection = 'search_next'"
    )
    switch = await psycopg.AsyncConnection.connect(settings.postgres_url)

    async def near_end() -> dict[TP, int]:
        await _lock_live(switch, "search")
        return await read_checkpoints(switch, "search")

    runner = Runner(
        settings,
        projection,
        group=None,
        stop_at_lag=settings.swap_max_lag,
        on_progress=None if quiet else print_progress("search rebuild"),
        on_near_end=near_end,
    )
    try:
        await runner.run()
        task = await asyncio.to_thread(client.swap_indexes, [{"indexes": [live, nxt]}])
        await projection.succeeded(task.task_uid)
        await switch.execute(
            f"DELETE FROM {LIVE_SCHEMA}.projection_checkpoints WHERE projection = 'search'"
        )
        await switch.execute(
            f"UPDATE {LIVE_SCHEMA}.projection_checkpoints SET projection = 'search'"
            f" WHERE projection = 'search_next'"
        )
        await switch.commit()
    finally:
        await projection.close()
        await switch.close()
    await asyncio.to_thread(_drop_index, client, nxt)  # the old one, after the swap
    return runner.folded


def _drop_index(client: Any, name: str) -> None:
    task = client.delete_index(name)
    client.wait_for_task(task.task_uid, timeout_in_ms=60_000)


async def rewind(settings: ProcessorSettings, projection: str, since: datetime) -> int:
    """Set a projection's live checkpoints to the first offsets at or after `since`.

    Returns how many events the projection will fold again (0: nothing was rewound). The
    running projector notices within a second, even when no new record arrives.
    """
    consumer = AIOKafkaConsumer(**settings.aiokafka_options())
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        topics = projection_topics(settings)
        tps = [TopicPartition(t, p) for t in topics for p in cluster.partitions_for_topic(t) or ()]
        found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    positions = {
        (tp.topic, tp.partition): (found[tp].offset if found.get(tp) else ends[tp]) for tp in tps
    }
    async with (
        await psycopg.AsyncConnection.connect(settings.postgres_url) as conn,
        conn.transaction(),
    ):
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEYS[projection],))
        current = await read_checkpoints(conn, projection)
        # Only ever backwards: a projection behind `since` must not skip what it lacks.
        rewound = {tp: o for tp, o in positions.items() if o < current.get(tp, 0)}
        await write_checkpoints(conn, projection, rewound)
    return sum(current.get(tp, 0) - o for tp, o in rewound.items())
