"""`chatlog replay --from-timestamp T` on a quiet system (issue 12, item 15).

The rewind moves the live checkpoints back; the running projector must start folding
again at once, not when a new record happens to arrive.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.settings import InfraSettings
from processors.__main__ import _rewound
from processors.pg_projection import PostgresProjection
from processors.projection import projection_topics
from processors.rebuild import rewind
from processors.runner import Runner
from processors.script import EPOCH, workload
from tests.integration.processors.support import processor_settings, publish

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(infra_settings: InfraSettings):  # type: ignore[no-untyped-def]
    return processor_settings(infra_settings)


def _lag(settings) -> int:
    """Log end minus the postgres projection's checkpoints, over every topic it folds."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "t-lag"})
    try:
        ends = 0
        for topic in projection_topics(settings):
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                ends += consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
    finally:
        consumer.close()
    with psycopg.connect(settings.postgres_url) as conn:
        row = conn.execute(
            'SELECT coalesce(sum("offset"), 0) FROM chatlog.projection_checkpoints'
            " WHERE projection = 'postgres'"
        ).fetchone()
    return ends - int(row[0] if row else 0)


async def _until_caught_up(settings, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (lag := await asyncio.to_thread(_lag, settings)) > 0:
        assert time.monotonic() < deadline, f"{what}: lag still {lag}"
        await asyncio.sleep(0.2)


async def test_a_rewind_refolds_at_once_without_a_new_record(settings) -> None:
    publish(settings, workload(20))
    projection = PostgresProjection(settings)
    runner = Runner(settings, projection, group=settings.group_id("postgres"))
    task = asyncio.create_task(runner.run())
    try:
        await _until_caught_up(settings, "first fold")
        folded = runner.folded

        rewound = await rewind(settings, "postgres", EPOCH)  # before every record
        assert rewound == folded > 0
        assert await asyncio.to_thread(_lag, settings) == rewound

        # Nothing new is published: the idle projector must notice by itself.
        await _until_caught_up(settings, "after the rewind", timeout_s=30)
        assert runner.folded == 2 * folded

        future = datetime(2999, 1, 1, tzinfo=UTC)
        assert await rewind(settings, "postgres", future) == 0
        assert _rewound("postgres", future, 0) == (
            "postgres: nothing rewound: 2999-01-01T00:00:00+00:00 is in the future"
        )
    finally:
        runner.stop()
        await task
        await projection.close()
