"""The Ray Serve deployment: each replica runs one ReplicaWorker.

Tokens never travel through Serve: a replica consumes prompts from Kafka and publishes
chunks to Kafka itself. Serve gives placement (replicas, CPUs/GPUs per replica),
restarts of unhealthy replicas (`check_health` fails when a worker loop died) and a small
HTTP surface per replica: `GET <route>/metrics` (Prometheus) and `GET <route>/status`.

Deploy: `serve run inference/serve_config.yaml` (or `serve deploy` to a running
cluster); `args:` in the file override `CHATLOG_*` settings, e.g. `engine: scripted`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response

from inference.bootstrap import build_engine
from inference.settings import InferenceSettings
from inference.worker import ReplicaWorker


@serve.deployment(
    name="InferenceReplica",
    max_ongoing_requests=16,
    health_check_period_s=5,
    health_check_timeout_s=10,
    graceful_shutdown_timeout_s=15,
)
class InferenceReplica:
    """One consumer-group member with its engine; see the module docstring."""

    async def __init__(self, settings: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits it
        self._settings = InferenceSettings(**settings)
        engine = await asyncio.to_thread(build_engine, self._settings)
        ctx = serve.get_replica_context()
        self._worker = ReplicaWorker(
            self._settings, engine, replica_id=f"{ctx.deployment}#{ctx.replica_id.unique_id}"
        )
        await self._worker.start()

    async def check_health(self) -> None:
        """Serve restarts the replica when this raises: a dead consumer loop does."""
        ok, reason = self._worker.healthy()
        if not ok:
            raise RuntimeError(reason)

    async def status(self) -> dict[str, Any]:
        """Replica id, assigned partitions, running and waiting requests."""
        ok, reason = self._worker.healthy()
        return {
            "replica_id": self._worker.replica_id,
            "healthy": ok,
            "reason": reason,
            "partitions": sorted(self._worker.assigned),
            "running": len(self._worker.scheduler.running),
            "waiting": len(self._worker.scheduler.waiting),
        }

    async def __call__(self, request: Request) -> Response:
        if request.url.path.rstrip("/").endswith("/metrics"):
            return Response(self._worker.metrics.exposition(), media_type="text/plain")
        return Response(json.dumps(await self.status()), media_type="application/json")

    async def __del__(self) -> None:
        await self._worker.stop()
        self._worker.engine.close()


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder (`import_path: inference.deployment:build_app`).

    Settings are resolved here, where `serve run`/`serve deploy` runs, and passed to the
    replicas explicitly: replica processes do not necessarily share this environment.
    """
    settings = InferenceSettings(**(args or {}))
    deployment: Any = InferenceReplica  # serve.deployment turned the class into a Deployment
    app: Application = deployment.options(
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
    ).bind(settings.model_dump(mode="json"))
    return app
