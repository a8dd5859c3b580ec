"""Request dependencies: the app's wired state and the authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from psycopg_pool import AsyncConnectionPool

from infra.auth import KeyResolver
from infra.http import Unauthorized, bearer_key
from infra.replicas import ReplicaView
from query_api.durable import DurableSource
from query_api.hub import Hub
from query_api.metrics import Metrics
from query_api.search import SearchBackend
from query_api.settings import QuerySettings


@dataclass
class AppState:
    """Everything the routes use, built once by `create_app`."""

    settings: QuerySettings
    pool: AsyncConnectionPool[Any]
    hub: Hub
    durable: DurableSource
    search: SearchBackend
    keys: KeyResolver
    metrics: Metrics
    ready: bool = False
    replicas: ReplicaView | None = None  # chat.replicas' beats, for /v1/models (#14)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.query
    return state


State = Annotated[AppState, Depends(get_state)]


async def current_user(state: State, authorization: Annotated[str | None, Header()] = None) -> str:
    """The user id of the bearer key, or 401 (a revoked key within AUTH_CACHE_TTL_S, 5 s:
    `state.keys` is the query API's only cache of keys)."""
    key = bearer_key(authorization)
    async with state.pool.connection() as conn:
        user = await state.keys.user_for(conn, key)
    if user is None:
        raise Unauthorized("Invalid API key.")
    return user


CurrentUser = Annotated[str, Depends(current_user)]
