"""The Postgres pool: one per process, opened by the app's lifespan, never at import."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from query_api.settings import QuerySettings


def make_pool(settings: QuerySettings) -> AsyncConnectionPool[Any]:
    """A closed pool of autocommit connections (reads only: no transactions)."""
    return AsyncConnectionPool(
        settings.postgres_url,
        min_size=1,
        max_size=settings.query_pool_size,
        kwargs={"autocommit": True, "connect_timeout": 10},
        open=False,
        name="query_api",
    )
