"""Projection checkpoints in Postgres: the truth about how far a projection has folded.

A batch's transaction first *fences*: it takes a shared advisory lock of its projection
(a rebuild's switch takes it exclusively, so it never interleaves with a batch) and checks,
row-locked, that the stored checkpoints are the ones this consumer started the batch from.
When they are not (the read model was switched under it, or another consumer took the
partition over), the batch is rolled back and the consumer seeks to the stored positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from processors.pg_store import LIVE_SCHEMA, checked_schema

AConn = psycopg.AsyncConnection[Any]
TP = tuple[str, int]

# pg_advisory_xact_lock keys, one per projection (arbitrary, stable, ours).
LOCK_KEYS = {"postgres": 7_744_110_001, "search": 7_744_110_002, "usage": 7_744_110_003}


class Fenced(Exception):
    """The stored checkpoints moved under this consumer: re-seek, do not write."""


async def read_checkpoints(
    conn: AConn, projection: str, schema: str = LIVE_SCHEMA
) -> dict[TP, int]:
    """Every stored (topic, partition) -> next offset of a projection."""
    s = checked_schema(schema)
    cur = await conn.execute(
        f'SELECT topic, partition, "offset" FROM {s}.projection_checkpoints WHERE projection = %s',
        (projection,),
    )
    return {(t, p): o for t, p, o in await cur.fetchall()}


async def fence(
    conn: AConn,
    projection: str,
    expected: Mapping[TP, int | None],
    schema: str = LIVE_SCHEMA,
    *,
    lock: bool = True,
) -> None:
    """Inside a transaction: lock out switches, verify the checkpoints are `expected`.

    A rebuild's private copy passes `lock=False`: its switch holds the lock exclusively
    while it folds the last events, and it is the only writer of its copy anyway.
    """
    s = checked_schema(schema)
    if lock and projection in LOCK_KEYS:
        await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (LOCK_KEYS[projection],))
    tps = list(expected)
    cur = await conn.execute(
        f'SELECT topic, partition, "offset" FROM {s}.projection_checkpoints'
        f" WHERE projection = %s AND (topic, partition) IN"
        f" (SELECT * FROM unnest(%s::text[], %s::int[])) FOR UPDATE",
        (projection, [t for t, _ in tps], [p for _, p in tps]),
    )
    stored: dict[TP, int | None] = {(t, p): o for t, p, o in await cur.fetchall()}
    moved = {tp: (stored.get(tp), want) for tp, want in expected.items() if stored.get(tp) != want}
    if moved:
        raise Fenced(f"{projection}: checkpoints moved (stored, expected): {moved}")


async def write_checkpoints(
    conn: AConn,
    projection: str,
    positions: Mapping[TP, int],
    schema: str = LIVE_SCHEMA,
) -> None:
    """Store next offsets; call in the same transaction as the rows they cover."""
    if not positions:
        return
    s = checked_schema(schema)
    tps = list(positions)
    await conn.execute(
        f'INSERT INTO {s}.projection_checkpoints (projection, topic, partition, "offset",'
        f" updated_at) SELECT %s, t, p, o, now() FROM unnest(%s::text[], %s::int[],"
        f" %s::bigint[]) AS x(t, p, o) ON CONFLICT (projection, topic, partition)"
        f' DO UPDATE SET "offset" = EXCLUDED."offset", updated_at = now()',
        (projection, [t for t, _ in tps], [p for _, p in tps], [positions[tp] for tp in tps]),
    )
