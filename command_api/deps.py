"""Request-scoped dependencies as `Annotated` aliases (the app's wiring lives in app.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from psycopg_pool import AsyncConnectionPool

from command_api.availability import Availability
from command_api.eventlog import KafkaEventLog
from command_api.metrics import Metrics
from command_api.prompts import PromptService
from command_api.readmodel import ReadModel
from command_api.settings import CommandSettings
from command_api.store import CommandStore
from command_api.upstream import StreamSource
from infra.auth import AUTH_CACHE_TTL_S, KeyResolver
from infra.http import Unauthorized, bearer_key


@dataclass
class Context:
    """Everything a request handler may use, built once per app by the lifespan."""

    settings: CommandSettings
    pool: AsyncConnectionPool[Any]
    store: CommandStore
    read_model: ReadModel
    log: KafkaEventLog
    prompts: PromptService
    streams: StreamSource
    resolver: KeyResolver
    metrics: Metrics
    availability: Availability
    auth_cache: AuthCache = field(default_factory=lambda: AuthCache())


class AuthCache:
    """Key -> user for a few seconds in front of an uncached KeyResolver (whose own cache
    would need a connection even for its hits). The command API's only cache of keys, so
    a revoked key stops working here within `ttl_s` (<= AUTH_CACHE_TTL_S, 5 s)."""

    def __init__(self, ttl_s: float = AUTH_CACHE_TTL_S, max_entries: int = 10_000) -> None:
        self._ttl_s, self._max = ttl_s, max_entries
        self._entries: dict[str, tuple[str, float]] = {}

    def get(self, key: str) -> str | None:
        hit = self._entries.get(key)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key: str, user: str) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()  # crude but bounded; misses only cost one query
        self._entries[key] = (user, time.monotonic() + self._ttl_s)


async def get_context(request: Request) -> Context:
    """Async on purpose: FastAPI runs a sync dependency in a worker thread."""
    ctx: Context = request.app.state.ctx
    return ctx


Ctx = Annotated[Context, Depends(get_context)]


async def current_user(ctx: Ctx, authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's user id from `Authorization: Bearer <key>`, else 401."""
    key = bearer_key(authorization)
    user = ctx.auth_cache.get(key)
    if user is not None:
        return user  # no pool checkout on the hot path
    async with ctx.pool.connection() as conn:
        user = await ctx.resolver.user_for(conn, key)
    if user is None:
        raise Unauthorized("Invalid API key.")
    ctx.auth_cache.put(key, user)
    return user


CurrentUser = Annotated[str, Depends(current_user)]
