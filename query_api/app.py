"""The app factory: wires settings, pool, hub and search; nothing connects before start-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from infra.auth import KeyResolver
from infra.clients import ensure_topics
from infra.http import install_error_handlers
from infra.openapi import error_response, install_openapi
from infra.replicas import ReplicaView
from infra.runtime import tune_gc
from query_api.db import make_pool
from query_api.deps import AppState
from query_api.durable import DurableSource
from query_api.hub import Hub
from query_api.metrics import Metrics
from query_api.routes import completions, history, ops, responses, search, usage
from query_api.search import MeiliSearch, PostgresSearch, SearchBackend
from query_api.settings import QuerySettings
from schemas.resources import MESSAGES_INDEX

log = logging.getLogger(__name__)


def create_app(
    settings: QuerySettings | None = None, *, search_backend: SearchBackend | None = None
) -> FastAPI:
    """The query API. `search_backend` overrides the configured one (tests)."""
    settings = settings or QuerySettings()
    settings.check_secrets()
    pool = make_pool(settings)
    hub = Hub(settings)
    if search_backend is None:
        search_backend = (
            MeiliSearch(settings.meili_url, settings.meili_key, settings.index_name(MESSAGES_INDEX))
            if settings.meili_url
            else PostgresSearch(pool)
        )
    metrics = Metrics(
        subscribers=lambda: hub.subscriber_count,
        buffered=lambda: hub.buffered_requests,
        hub_lag=lambda: hub.consumer_lag(),
        buffered_bytes=lambda: hub.buffered_bytes,
        backfills_running=lambda: hub.backfills.running,
        backfills_waiting=lambda: hub.backfills.waiting,
        partitions_read=lambda: hub.partitions_read,
        records_read=lambda: hub.records_read,
    )
    state = AppState(
        settings,
        pool,
        hub,
        DurableSource(settings, pool, hub),
        search_backend,
        KeyResolver(),
        metrics,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await wait_for_dependencies(state)
        state.replicas = ReplicaView(
            settings.aiokafka_options(),
            settings.topics.replicas,
            settings.replica_stale_s,
            settings.partitions,
        )
        await state.replicas.start()
        tune_gc()  # the hub's buffers would otherwise make full collections stall streams
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            await hub.stop()
            await state.replicas.stop()
            await pool.close()
            if isinstance(search_backend, MeiliSearch):
                await search_backend.aclose()

    app = FastAPI(title="chatlog query API", lifespan=lifespan)
    app.state.query = state
    install_error_handlers(app)
    for module in (history, search, completions, ops, responses, usage):
        app.include_router(module.router)
    install_openapi(
        app,
        public={"/healthz", "/readyz", "/metrics"},
        responses={
            ("get", "/v1/chat/completions/{request_id}/stream"): {
                200: {
                    "description": "SSE: chunk, reset, done and error events",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                }
            },
            ("get", "/v1/responses/{response_id}"): {
                200: {
                    "description": "The Response, or (`stream=true`) its SSE event stream",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                }
            },
            ("get", "/readyz"): {503: error_response(503)},
            ("get", "/metrics"): {
                200: {
                    "description": "Prometheus metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        },
    )
    return app


async def wait_for_dependencies(state: AppState) -> None:
    """Open the pool and start the hub, retrying a bounded number of times."""
    s = state.settings
    for attempt in range(1, s.startup_attempts + 1):
        try:
            await state.pool.open(wait=True, timeout=10)
            await asyncio.to_thread(ensure_topics, s, 10.0)
            await state.hub.start()
            return
        except Exception as exc:
            if attempt == s.startup_attempts:
                raise
            log.warning("dependencies not ready (%s/%s): %s", attempt, s.startup_attempts, exc)
            await asyncio.sleep(s.startup_backoff_s)
