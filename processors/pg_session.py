"""One long-lived autocommit Postgres connection per projection, reopened after an outage.

A projection holds one connection for its whole life (its batches are sequential); when
Postgres restarts, the next batch gets a fresh connection instead of a dead one.
"""

from __future__ import annotations

from typing import Any

import psycopg


class PgSession:
    """Lazily opened, transparently reopened connection to `url`."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                await self._conn.close()
            self._conn = await psycopg.AsyncConnection.connect(
                self._url, connect_timeout=5, autocommit=True
            )
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
