"""The Postgres pool: one per process, opened by the app's lifespan, never at import."""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from query_api.settings import QuerySettings


def make_pool(settings: QuerySettings) -> AsyncConnectionPool[Any]:
    """A closed pool of autocommit connections (reads only: no transactions)."""
    return AsyncConnectionPool(
        settings.postgres_url,
        min_size=1,
        max_size=settings.query_pool_size,
        timeout=settings.query_pool_timeout_s,
        check=check_idle_connection,  # drop connections a Postgres restart broke
        kwargs={"autocommit": True, "connect_timeout": 10},
        open=False,
        name="query_api",
    )


async def check_idle_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check on checkout: a round trip only for a connection that looks broken.

    An idle pooled connection's socket has nothing to read unless the server wrote to it
    (a Postgres restart sends FATAL and closes it); only then does psycopg's full check
    run, fail, and make the pool discard it. (Same check as command_api's pool.)
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        await AsyncConnectionPool.check_connection(conn)
