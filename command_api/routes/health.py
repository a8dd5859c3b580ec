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
    """Kafka and Postgres are reachable now."""

    async def postgres() -> bool:
        try:
            async with asyncio.timeout(2), ctx.pool.connection(timeout=2) as conn:
                await conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    pg, kafka = await asyncio.gather(postgres(), ctx.log.ping())
    ready = pg and kafka
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "postgres": pg, "kafka": kafka},
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
async def metrics(ctx: Ctx) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
