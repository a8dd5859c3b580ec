"""Prometheus metrics: requests, latency, rejections by reason, appended events.

One registry per app (not the global one) so several apps in one process (tests) do not
collide; `/metrics` serves it.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chatlog_command_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "chatlog_command_request_seconds",
            "HTTP request latency (until the response starts)",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.rejections = Counter(
            "chatlog_command_rejections",
            "Refused writes by reason (validation, auth, rate_limited, ...)",
            ["reason"],
            registry=self.registry,
        )
        self.events = Counter(
            "chatlog_command_events_appended",
            "Events acknowledged by Kafka, by type",
            ["event_type"],
            registry=self.registry,
        )

    def appended(self, event_type: str) -> None:
        """Count one acknowledged event."""
        self.events.labels(event_type).inc()


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = getattr(scope.get("route"), "path", "unmatched")
                method = scope["method"]
                self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)
                self.metrics.requests.labels(route, method, str(status)).inc()
            await send(message)

        await self.app(scope, receive, send_wrapper)
