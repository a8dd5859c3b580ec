"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Subscribers, delivery lag (event produced -> written to the client), hub lag."""

    def __init__(
        self,
        subscribers: Callable[[], float],
        buffered: Callable[[], float],
        hub_lag: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry()
        Gauge(
            "chatlog_query_subscribers", "Open SSE subscribers", registry=self.registry
        ).set_function(subscribers)
        Gauge(
            "chatlog_query_hub_buffered_requests",
            "Requests buffered by the hub",
            registry=self.registry,
        ).set_function(buffered)
        Gauge(
            "chatlog_query_hub_consumer_lag",
            "Hub records behind the high-water marks",
            registry=self.registry,
        ).set_function(hub_lag)
        self.delivery_lag = Histogram(
            "chatlog_query_delivery_lag_seconds",
            "Event produced -> written to the SSE client",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.overflows = Counter(
            "chatlog_query_slow_client_drops",
            "Clients told to reconnect because their queue overflowed",
            registry=self.registry,
        )
        self.backfills = Counter(
            "chatlog_query_gap_fills", "Gaps filled from Postgres/Kafka", registry=self.registry
        )
