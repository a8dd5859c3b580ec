"""Liveness, readiness, metrics and the model list."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infra.http import NotFound, Unavailable
from query_api.deps import CurrentUser, State

router = APIRouter(tags=["ops"])
log = logging.getLogger(__name__)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> dict[str, Any]:
    """Postgres answers and the hub is consuming."""
    if not state.ready or not state.hub.running:
        raise Unavailable("Not ready: the hub is not consuming.")
    try:
        async with state.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    except Exception as exc:
        log.warning("readyz: Postgres does not answer: %r", exc)
        raise Unavailable("Not ready: Postgres does not answer.") from exc
    return {"status": "ready", "hub_lag": state.hub.consumer_lag()}


@router.get("/metrics")
async def metrics(state: State) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(state: State, _: CurrentUser) -> dict[str, Any]:
    """The models that can answer now (a live replica beats on chat.replicas), the default
    first; a model known but down is listed under `unavailable` instead."""
    table = state.replicas.table if state.replicas is not None else None
    names = [*state.settings.model_ids]
    names += [m for m in (table.models() if table else []) if m not in names]
    data: list[dict[str, Any]] = []
    down: list[dict[str, Any]] = []
    for m in names:
        entry: dict[str, Any] = {"id": m, "object": "model", "created": 0, "owned_by": "chatlog"}
        health = table.health(m) if table else None
        if health is None:  # no replica of it ever beat: not judged (as before #14)
            data.append(entry)
        elif health.available:
            data.append(
                {
                    **entry,
                    "live_replicas": health.live_replicas,
                    "running": health.running,
                    "waiting": health.waiting,
                    "ttft_ms": health.ttft_ms,
                }
            )
        else:
            age = health.last_beat_age_s
            down.append(
                {
                    **entry,
                    "status": "unavailable",
                    "reason": "no live replica",
                    "last_beat_s_ago": None if age is None else round(age, 1),
                }
            )
    return {"object": "list", "data": data, "unavailable": down}


@router.get("/v1/models/{model_id}")
async def model(model_id: str, state: State, _: CurrentUser) -> dict[str, Any]:
    """One served model (the OpenAI SDK's `models.retrieve`)."""
    if model_id not in state.settings.model_ids:
        raise NotFound(
            f"The model {model_id!r} does not exist.", param="model", code="model_not_found"
        )
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "chatlog"}
