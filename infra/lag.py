"""Projection lag: how far each projection's Postgres checkpoint trails the log's end.

Read straight from `chatlog.projection_checkpoints` and the brokers' high watermarks, so
operators' tools need neither the processors' code nor their process.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from infra.clients import pg_connect
from infra.settings import InfraSettings


@dataclass(frozen=True)
class PartitionLag:
    projection: str
    topic: str
    partition: int
    checkpoint: int
    log_end: int

    @property
    def lag(self) -> int:
        return max(0, self.log_end - self.checkpoint)


def projection_lags(settings: InfraSettings) -> list[PartitionLag]:
    """Checkpoint vs log end for every (projection, topic, partition) that has a checkpoint."""
    with pg_connect(settings) as conn:
        rows = conn.execute(
            'SELECT projection, topic, partition, "offset" FROM chatlog.projection_checkpoints'
            " ORDER BY projection, topic, partition"
        ).fetchall()
    if not rows:
        return []
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "chatlog-lag-probe"}
    )
    try:
        out = []
        for projection, topic, partition, offset in rows:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            out.append(PartitionLag(projection, topic, partition, offset, high))
        return out
    finally:
        consumer.close()


def total_lag_by_projection(settings: InfraSettings) -> dict[str, int]:
    totals: dict[str, int] = {}
    for p in projection_lags(settings):
        totals[p.projection] = totals.get(p.projection, 0) + p.lag
    return totals
