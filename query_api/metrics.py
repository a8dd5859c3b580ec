"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class LoopHistogram(Collector):
    """A Prometheus histogram for one event loop's hot path: observed once per delivered
    SSE event, so without `Histogram`'s two lock round trips per observation. Only the
    event loop's thread observes; a scrape reads plain ints (at worst one observation
    behind), exposed exactly as a `Histogram` would be (`_bucket`, `_count`, `_sum`).
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name, self._doc = name, documentation
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), float(cumulative)))
        yield HistogramMetricFamily(self._name, self._doc, buckets=buckets, sum_value=self._sum)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Metrics:
    """Subscribers, delivery lag (event produced -> written to the client), hub lag, what
    the hub holds in memory, the Kafka backfills."""

    def __init__(
        self,
        subscribers: Callable[[], float],
        buffered: Callable[[], float],
        hub_lag: Callable[[], float],
        *,
        buffered_bytes: Callable[[], float] = lambda: 0,
        backfills_running: Callable[[], float] = lambda: 0,
        backfills_waiting: Callable[[], float] = lambda: 0,
        partitions_read: Callable[[], float] = lambda: 0,
        records_read: Callable[[], float] = lambda: 0,
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
        Gauge(
            "chatlog_query_hub_buffered_bytes",
            "Bytes of chunks buffered by the hub (estimated; bounded by CHATLOG_HUB_MAX_BYTES)",
            registry=self.registry,
        ).set_function(buffered_bytes)
        Gauge(
            "chatlog_query_backfills_running",
            "Kafka backfills running (bounded by CHATLOG_BACKFILL_CONCURRENCY)",
            registry=self.registry,
        ).set_function(backfills_running)
        Gauge(
            "chatlog_query_backfills_waiting",
            "Kafka backfills waiting for a slot",
            registry=self.registry,
        ).set_function(backfills_waiting)
        Gauge(
            "chatlog_query_hub_partitions",
            "chat.completions partitions this process's hub reads (its share, and adopted)",
            registry=self.registry,
        ).set_function(partitions_read)
        Gauge(
            "chatlog_query_hub_records_read",
            "Records the hub has read since it started (a counter; its share's load)",
            registry=self.registry,
        ).set_function(records_read)
        self.redirects = Counter(
            "chatlog_query_owner_redirects",
            "Reads handed to the query process whose hub reads their partition",
            registry=self.registry,
        )
        self.delivery_lag = LoopHistogram(
            "chatlog_query_delivery_lag_seconds",
            "Event produced -> written to the SSE client",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        )
        self.registry.register(self.delivery_lag)
        self.overflows = Counter(
            "chatlog_query_slow_client_drops",
            "Clients told to reconnect because their queue overflowed",
            registry=self.registry,
        )
        self.backfills = Counter(
            "chatlog_query_gap_fills", "Gaps filled from Postgres/Kafka", registry=self.registry
        )
