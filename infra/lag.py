"""Projection lag: how far each projection's Postgres checkpoint trails the log's end.

Read straight from `chatlog.projection_checkpoints` and the brokers' high watermarks, so
operators' tools (`chatlog status`, `python -m processors status`) need no projection code.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from infra.clients import pg_connect
from infra.settings import InfraSettings

PROJECTIONS = ("postgres", "search", "usage")


@dataclass(frozen=True)
class PartitionLag:
    projection: str
    topic: str
    partition: int
    checkpoint: int | None  # next offset to fold; None: nothing folded yet
    log_end: int

    @property
    def lag(self) -> int:
        return max(0, self.log_end - (self.checkpoint or 0))


def projection_lags(settings: InfraSettings) -> list[PartitionLag]:
    """Checkpoint vs log end for every projection and partition of the topics they fold."""
    with pg_connect(settings) as conn:
        rows = conn.execute(
            'SELECT projection, topic, partition, "offset" FROM chatlog.projection_checkpoints'
        ).fetchall()
    stored = {(p, t, n): o for p, t, n, o in rows}
    # What the projections fold today, plus any topic a projection has checkpoints on.
    t = settings.topics
    base = {"usage": (t.conversations, t.answers)}  # the meter reads no token chunks
    folds = {
        p: set(base.get(p, (t.conversations, t.completions))) | {x for q, x, _ in stored if q == p}
        for p in PROJECTIONS
    }
    consumer = Consumer({**settings.confluent_kafka_config(), "group.id": "chatlog-lag-probe"})
    try:
        meta = consumer.list_topics(timeout=10)
        ends: dict[tuple[str, int], int] = {}
        for topic in sorted(set().union(*folds.values())):
            partitions = meta.topics[topic].partitions if topic in meta.topics else {}
            for p in sorted(partitions):
                _, ends[(topic, p)] = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10
                )
    finally:
        consumer.close()
    return [
        PartitionLag(projection, topic, p, stored.get((projection, topic, p)), end)
        for projection in PROJECTIONS
        for (topic, p), end in sorted(ends.items())
        if topic in folds[projection]
    ]


def total_lag_by_projection(settings: InfraSettings) -> dict[str, int]:
    totals: dict[str, int] = {}
    for p in projection_lags(settings):
        totals[p.projection] = totals.get(p.projection, 0) + p.lag
    return totals
