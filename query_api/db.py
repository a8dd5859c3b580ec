"""The Postgres pool: one per process, opened by the app's lifespan, never at import."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from infra.clients import check_idle_connection
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
