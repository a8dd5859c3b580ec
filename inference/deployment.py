"""The Ray Serve application: one deployment per served model, each replica one ReplicaWorker.

Tokens never travel through Serve: a replica consumes prompts from Kafka (in its model's
consumer group) and publishes chunks to Kafka itself. Serve gives placement (replicas,
CPUs/GPUs per replica, per model), restarts of unhealthy replicas (`check_health` fails
when a worker loop died) and a small HTTP surface through the `InferenceRouter` ingress
(with one model, the replicas are the ingress):
`GET <route>/status` (every model's; 503 when none is healthy), `GET <route>/<model>/status` and
`GET <route>/<model>/metrics` (Prometheus, one replica's); `<route>/metrics` is the
default model's.

Deploy: `serve run inference/serve_config.yaml` (or `serve deploy` to a running
cluster); `args:` in the file override `CHATLOG_*` settings, e.g. `engine: scripted`.
The models, their engines and replica counts are settings (`models`, `model_settings`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
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
    """One consumer-group member of one model, with its engine; see the module docstring."""

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
        """Model, replica id, assigned partitions, running and waiting requests."""
        ok, reason = self._worker.healthy()
        return {
            "model": self._worker.engine.model_id,
            "replica_id": self._worker.replica_id,
            "healthy": ok,
            "reason": reason,
            "partitions": sorted(self._worker.assigned),
            "running": len(self._worker.scheduler.running),
            "waiting": len(self._worker.scheduler.waiting),
        }

    async def metrics(self) -> bytes:
        """This replica's Prometheus exposition."""
        return self._worker.metrics.exposition()

    async def __call__(self, request: Request) -> Response:
        """The app's HTTP surface when this is its only model (no router actor then)."""
        model = self._worker.engine.model_id
        return await answer(
            request.url.path,
            self._settings.serve_route,
            {model: self.status},
            {model: self.metrics},
        )

    async def __del__(self) -> None:
        await self._worker.stop()
        self._worker.engine.close()


def route(path: str, prefix: str, models: list[str]) -> tuple[str | None, str] | None:
    """What a request path asks for: (model, "status" | "metrics"); model None is every
    model's status, or the default model's metrics. None: nothing there (404)."""
    rest = path.removeprefix(prefix.rstrip("/")).strip("/")
    if rest in ("status", "metrics", ""):
        return None, rest or "status"
    model, _, what = rest.rpartition("/")
    if model in models and what in ("status", "metrics"):
        return model, what
    return None


Status = Callable[[], Awaitable[dict[str, Any]]]
Metrics = Callable[[], Awaitable[bytes]]


async def answer(
    path: str, prefix: str, status: dict[str, Status], metrics: dict[str, Metrics]
) -> Response:
    """The HTTP surface over each model's `status()` and `metrics()` (see `route`)."""
    models = list(status)
    asked = route(path, prefix, models)
    if asked is None:
        return Response("not found", status_code=404, media_type="text/plain")
    model, what = asked
    if what == "metrics":
        return Response(await metrics[model or models[0]](), media_type="text/plain")
    names = [model] if model else models
    answers = await asyncio.gather(*(status[m]() for m in names), return_exceptions=True)
    # a model whose replica fails answers for itself; the others still report
    statuses = [
        a if isinstance(a, dict) else {"model": m, "healthy": False, "reason": repr(a)}
        for m, a in zip(names, answers, strict=True)
    ]
    ok = any(s["healthy"] for s in statuses)
    body = statuses[0] if model else {"models": {s["model"]: s for s in statuses}}
    return Response(json.dumps(body), status_code=200 if ok else 503, media_type="application/json")


@serve.deployment(name="InferenceRouter", ray_actor_options={"num_cpus": 0})
class InferenceRouter:
    """The ingress of an app of several models: asks the model's deployment."""

    def __init__(self, replicas: dict[str, DeploymentHandle[Any]], prefix: str) -> None:
        self._replicas, self._prefix = replicas, prefix

    async def __call__(self, request: Request) -> Response:
        return await answer(
            request.url.path,
            self._prefix,
            {m: self._status(h) for m, h in self._replicas.items()},
            {m: self._metrics(h) for m, h in self._replicas.items()},
        )

    @staticmethod
    def _status(handle: DeploymentHandle[Any]) -> Status:
        async def call() -> dict[str, Any]:
            result: dict[str, Any] = await handle.status.remote()
            return result

        return call

    @staticmethod
    def _metrics(handle: DeploymentHandle[Any]) -> Metrics:
        async def call() -> bytes:
            result: bytes = await handle.metrics.remote()
            return result

        return call


def deployment_name(model: str) -> str:
    """A Serve deployment name for `model` (replica ids are `<name>#<id>`: no `#` in it)."""
    return "InferenceReplica-" + re.sub(r"[^A-Za-z0-9._-]", "_", model)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder (`import_path: inference.deployment:build_app`).

    Settings are resolved here, where `serve run`/`serve deploy` runs, and passed to the
    replicas explicitly: replica processes do not necessarily share this environment.
    """
    settings = InferenceSettings(**(args or {}))
    served = settings.served()
    if not served:
        raise ValueError(f"no model of {settings.models!r} has replicas here")
    replica: Any = InferenceReplica  # serve.deployment turned the classes into Deployments
    router: Any = InferenceRouter
    replicas = {
        s.model_id: replica.options(
            name=deployment_name(s.model_id),
            num_replicas=s.replicas,
            ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
        ).bind(s.model_dump(mode="json"))
        for s in served
    }
    if len(replicas) == 1:  # the replicas answer HTTP themselves: one actor fewer
        only: Application = next(iter(replicas.values()))
        return only
    app: Application = router.bind(replicas, settings.serve_route)
    return app
