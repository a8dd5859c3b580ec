"""The app factory and its lifespan: wait for Postgres and Kafka, migrate, then serve.

Nothing connects at import time; `create_app()` only builds the app. The lifespan opens
the Postgres pool (bounded wait), applies schema `command` (and the read-model DDL it
reads, both idempotent), starts the Kafka producer (bounded wait) and the HTTP client for
the query API's streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from psycopg_pool import AsyncConnectionPool

from command_api.availability import Availability
from command_api.ddl import apply_command_ddl
from command_api.deadlines import DeadlineKeeper
from command_api.deps import Context
from command_api.eventlog import KafkaEventLog
from command_api.fastpath import DirectRoute
from command_api.metrics import Metrics, MetricsMiddleware
from command_api.prompts import PromptService
from command_api.readmodel import ReadModel
from command_api.routes import branches, completions, conversations, health, responses, sessions
from command_api.settings import CommandSettings
from command_api.store import CommandStore
from command_api.upstream import StreamSource, relay_client
from command_api.validation import ROLES, ChatCompletionBody
from infra.auth import KeyResolver
from infra.clients import apply_read_model_ddl, check_idle_connection, ensure_topics, pg_connect
from infra.http import ApiError, install_error_handlers
from infra.openapi import install_openapi
from infra.runtime import tune_gc

log = logging.getLogger(__name__)
JANITOR_PERIOD_S = 600.0


def create_app(settings: CommandSettings | None = None, **overrides: Any) -> FastAPI:
    """Build the command API. `overrides` replace individual settings (tests, benchmarks)."""
    if settings is None:
        settings = CommandSettings(**overrides)
    elif overrides:
        settings = settings.model_copy(update=overrides)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _running(settings, metrics) as ctx:
            app.state.ctx = ctx
            yield

    app = FastAPI(title="chatlog command API", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    _count_rejections(app, metrics)
    for module in (completions, conversations, branches, health, responses, sessions):
        app.include_router(module.router)
    accept = next(
        r
        for r in completions.router.routes
        if isinstance(r, APIRoute) and r.endpoint is completions.create_chat_completion
    )
    app.add_middleware(DirectRoute, owner=app, route=accept, method="POST")  # inner
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outer: it times both
    _document(app, settings)
    return app


ACCEPT = ("post", "/v1/chat/completions")
RESPOND = ("post", "/v1/responses")
_OBJECT = {"application/json": {"schema": {"type": "object"}}}


def _document(app: FastAPI, settings: CommandSettings) -> None:
    """The OpenAPI document: the accept path parses its own body (validation.py), so its
    schema and its statuses are stated here (infra.openapi adds the common ones)."""

    def refine(doc: dict[str, Any]) -> None:
        # what validation.py checks beyond the model's types, where JSON Schema can say it
        schemas = doc["components"]["schemas"]
        body = schemas["ChatCompletionBody"]["properties"]
        body["model"]["enum"] = list(settings.model_ids)
        body["messages"].update(minItems=1, maxItems=settings.max_messages)
        schemas["_Message"]["properties"]["role"]["enum"] = list(ROLES)

    install_openapi(
        app,
        public={"/healthz", "/readyz", "/metrics"},
        bodies={ACCEPT: ChatCompletionBody, RESPOND: responses.ResponsesBody},
        # 500/504: a `stream: false` wait whose generation failed / outlasted the wait
        errors={
            ACCEPT: (400, 404, 409, 413, 422, 429, 500, 504),
            RESPOND: (400, 404, 409, 413, 429, 504),
        },
        headers={ACCEPT: ("Idempotency-Key", "Prefer", "traceparent")},
        refine=refine,
        responses={
            ACCEPT: {
                200: {
                    "description": "The finished chat.completion, or its SSE stream "
                    "(`stream: true`)",
                    "content": {**_OBJECT, "text/event-stream": {"schema": {"type": "string"}}},
                },
                202: {"description": "Accepted (`Prefer: respond-async`)", "content": _OBJECT},
            },
            RESPOND: {
                200: {
                    "description": "The Response (queued with `background`), or its SSE "
                    "event stream (`stream: true`)",
                    "content": {**_OBJECT, "text/event-stream": {"schema": {"type": "string"}}},
                }
            },
            ("post", "/v1/chat/completions/{request_id}/cancel"): {
                202: {"description": "Cancel requested now", "content": _OBJECT}
            },
            ("get", "/readyz"): {503: {"description": "Not ready", "content": _OBJECT}},
            ("get", "/metrics"): {
                200: {
                    "description": "Prometheus metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        },
    )


@contextlib.asynccontextmanager
async def _running(settings: CommandSettings, metrics: Metrics) -> AsyncIterator[Context]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.postgres_url,
        min_size=settings.pg_pool_min,
        max_size=settings.pg_pool_max,
        kwargs={"autocommit": True},
        check=check_idle_connection,  # drop connections a Postgres restart broke
        open=False,
    )
    # Bounded wait: the pool retries connecting until the timeout, then raises.
    await pool.open(wait=True, timeout=settings.startup_timeout_s)
    log_ = KafkaEventLog(settings)
    http = relay_client(settings.query_api_url)
    janitor: asyncio.Task[None] | None = None
    availability = Availability(settings, metrics.registry)
    keeper = DeadlineKeeper(
        settings, judged=lambda model: availability.view.table.health(model) is not None
    )
    try:
        await asyncio.to_thread(_migrate, settings)
        await log_.start(settings.startup_timeout_s, required=settings.require_kafka_at_startup)
        if settings.require_kafka_at_startup:  # topics and their retention (infra.clients)
            await asyncio.to_thread(ensure_topics, settings)
        store = CommandStore(pool, settings)
        read_model = ReadModel(pool)
        ctx = Context(
            settings=settings,
            pool=pool,
            store=store,
            read_model=read_model,
            log=log_,
            prompts=PromptService(
                settings, store, read_model, log_, metrics, gate=availability.check
            ),
            streams=StreamSource(http, not_found_grace_s=settings.continuation_wait_s),
            resolver=KeyResolver(ttl_s=0),  # AuthCache is the one cache: bounds never stack
            metrics=metrics,
            availability=availability,
        )
        await availability.start()
        await keeper.start()
        janitor = asyncio.create_task(_janitor(store))
        tune_gc()  # full collections were the accept latency's p99 (infra.runtime says why)
        yield ctx
    finally:
        if janitor:
            janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await janitor
        await keeper.stop()
        await availability.stop()
        await http.aclose()
        await log_.close()
        await pool.close()


def _migrate(settings: CommandSettings) -> None:
    apply_read_model_ddl(settings)  # what we read; idempotent, owned by processors
    with pg_connect(settings) as conn:
        apply_command_ddl(conn)


async def _janitor(store: CommandStore) -> None:
    """Drops idempotency keys past their 24 h (expired ones are already reusable)."""
    while True:
        await asyncio.sleep(JANITOR_PERIOD_S)
        try:
            await store.purge_expired_keys()
        except Exception:  # a transient database error must not kill the janitor
            log.exception("purging expired idempotency keys failed")


def _count_rejections(app: FastAPI, metrics: Metrics) -> None:
    """Wrap the shared error handlers so every refusal is counted by its code."""
    api_handler = app.exception_handlers[ApiError]
    validation_handler = app.exception_handlers[RequestValidationError]

    async def on_api_error(request: Request, exc: Exception) -> Any:
        metrics.rejections.labels(getattr(exc, "code", None) or "error").inc()
        return await api_handler(request, exc)  # type: ignore[misc]  # ours are async

    async def on_validation(request: Request, exc: Exception) -> Any:
        metrics.rejections.labels("invalid_value").inc()
        return await validation_handler(request, exc)  # type: ignore[misc]

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)


__all__ = ["create_app"]
