"""Prometheus metrics of the projections: per-partition lag and folding rate."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter("chatlog_projection_events_total", "Events folded by a projection", ["projection"])
EVENTS_PER_SECOND = Gauge(
    "chatlog_projection_events_per_second", "Recent folding rate of a projection", ["projection"]
)
LAG = Gauge(
    "chatlog_projection_lag_events",
    "Log end minus checkpoint, per partition",
    ["projection", "topic", "partition"],
)
DEAD_LETTERED = Counter(
    "chatlog_projection_dead_lettered_total", "Events a projection sent to the DLQ", ["projection"]
)
DLQ_RECORDS = Counter(
    "chatlog_dlq_records_total",
    "Records seen on the DLQ topic, by the consumer that wrote them",
    ["consumer"],
)
TRANSIENT_FAILURES = Counter(
    "chatlog_projection_transient_failures_total",
    "Batches paused by a transient failure (Postgres/Meilisearch/Kafka down)",
    ["projection"],
)
