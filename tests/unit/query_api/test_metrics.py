"""The loop-only delivery-lag histogram exposes exactly what a prometheus `Histogram` would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from query_api.metrics import Metrics

BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


def _lines(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [x for x in text.splitlines() if "delivery_lag" in x and "_created" not in x]


def test_the_delivery_lag_histogram_matches_prometheus_histogram() -> None:
    metrics = Metrics(lambda: 0, lambda: 0, lambda: 0)
    reference = CollectorRegistry()
    histogram = Histogram(
        "chatlog_query_delivery_lag_seconds",
        "Event produced -> written to the SSE client",
        buckets=BUCKETS,
        registry=reference,
    )
    for value in (0.0, 0.001, 0.002, 0.0021, 0.05, 0.3, 5.0, 7.5):  # bounds are inclusive
        metrics.delivery_lag.observe(value)
        histogram.observe(value)
    assert _lines(metrics.registry) == _lines(reference)
    assert 'chatlog_query_delivery_lag_seconds_bucket{le="0.002"} 3.0' in _lines(reference)
