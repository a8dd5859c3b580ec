"""The faust app: the processors' worker shell.

faust runs the process (signals, logging, service start/stop). One faust agent, stateless
with concurrency 1, counts the DLQ for a metric. The projections are app tasks that run
`Runner` loops with their own consumers: see `processors.runner` for why they are not
faust agents. No faust tables, no exactly_once: the Postgres checkpoints are the truth.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from infra.clients import ensure_search_index
from processors import metrics
from processors.pg_projection import PostgresProjection
from processors.projection import Projection
from processors.runner import Runner
from processors.search_projection import SearchProjection
from processors.settings import ProcessorSettings
from processors.usage.projection import UsageProjection

log = logging.getLogger(__name__)


def create_app(settings: ProcessorSettings) -> faust.App:
    """The faust app with the DLQ agent and one task per enabled projection."""
    app = faust.App(
        f"{settings.topic_prefix}chatlog-processors",
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=settings.faust_credentials(),
        datadir=str(settings.home / "processors"),
        web_enabled=False,
        topic_disable_leader=True,  # no assignor topic: our agents hold no tables
        topic_allow_declare=False,  # topics are created by `chatlog infra start`
        # faust's default 60 s session means a SIGKILLed worker's successor waits a
        # minute for the dead member to expire before its tasks start.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
    )
    dlq = app.topic(settings.topics.dlq, key_serializer="raw", value_serializer="raw")

    @app.agent(dlq, concurrency=1)
    async def dead_letters(stream: Any) -> None:
        async for event in stream.events():
            headers = dict(event.message.headers or ())
            consumer = headers.get("dlq-consumer", b"unknown")
            metrics.DLQ_RECORDS.labels(consumer.decode(errors="replace")).inc()

    for name in settings.enabled_projections:
        app.task(_projection_task(settings, name))
    return app


def build_projection(settings: ProcessorSettings, name: str) -> Projection:
    if name == "postgres":
        return PostgresProjection(settings)
    if name == "search":
        if not settings.meili_url:
            raise ValueError("the search projection needs CHATLOG_MEILI_URL")
        ensure_search_index(settings)
        return SearchProjection(settings)
    if name == "usage":
        return UsageProjection(settings)
    raise ValueError(f"unknown projection {name!r} (postgres, search, usage)")


def _projection_task(settings: ProcessorSettings, name: str) -> Any:
    async def run_projection(app: faust.App) -> None:
        projection = build_projection(settings, name)
        runner = Runner(settings, projection, group=settings.group_id(name))
        log.info("projection %s starting", name)
        try:
            await runner.run()
        finally:
            runner.stop()
            await projection.close()

    return run_projection
