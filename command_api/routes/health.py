"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from command_api.deps import Ctx

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: Ctx) -> JSONResponse:
    """Kafka and Postgres are reachable now, and some model can answer (its breaker is not open)."""

    async def postgres() -> bool:
        try:
            async with asyncio.timeout(2), ctx.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    pg, kafka = await asyncio.gather(postgres(), ctx.log.ping())
    models = ctx.availability.snapshot()
    # Not ready when no model can take a prompt: every one of them would answer 503.
    answering = [m for m, v in models.items() if v["breaker"] != "open"]
    ready = pg and kafka and bool(answering)
    status = (
        "unavailable" if not ready else ("ready" if len(answering) == len(models) else "degraded")
    )
    return JSONResponse(
        {"status": status, "postgres": pg, "kafka": kafka, "models": models},
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
async def metrics(ctx: Ctx) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
