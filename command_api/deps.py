"""Request-scoped dependencies as `Annotated` aliases (the app's wiring lives in app.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from psycopg_pool import AsyncConnectionPool

from command_api.eventlog import KafkaEventLog
from command_api.metrics import Metrics
from command_api.prompts import PromptService
from command_api.readmodel import ReadModel
from command_api.settings import CommandSettings
from command_api.store import CommandStore
from command_api.upstream import StreamSource
from infra.auth import KeyResolver
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


def get_context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


Ctx = Annotated[Context, Depends(get_context)]


async def current_user(ctx: Ctx, authorization: Annotated[str | None, Header()] = None) -> str:
    """The caller's user id from `Authorization: Bearer <key>`, else 401."""
    key = bearer_key(authorization)
    async with ctx.pool.connection() as conn:
        user = await ctx.resolver.user_for(conn, key)
    if user is None:
        raise Unauthorized("Invalid API key.")
    return user


CurrentUser = Annotated[str, Depends(current_user)]
