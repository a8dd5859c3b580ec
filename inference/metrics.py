"""Prometheus metrics of one replica, named after vLLM's (`vllm:time_to_first_token_seconds`…)
so dashboards built for vLLM read them with a different prefix.

Each worker has its own registry: several workers can live in one process (tests), and a
Ray replica serves its registry on `/metrics` of its Serve route.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "chatlog_inference:"
_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class WorkerMetrics:
    """The metrics one ReplicaWorker updates; labels: model_name, replica."""

    def __init__(self, model_name: str, replica: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name, "replica": replica}
        names = list(labels)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, names, buckets=buckets, registry=self.registry)

        self.ttft = hist(
            "time_to_first_token_seconds",
            "Prompt consumed -> first token sampled (queue + prefill).",
            _LATENCY_BUCKETS,
        ).labels(**labels)
        self.itl = hist(
            "inter_token_latency_seconds", "Time between two tokens of a request.", _ITL_BUCKETS
        ).labels(**labels)
        self.queue_time = hist(
            "request_queue_time_seconds", "Prompt consumed -> joined the batch.", _LATENCY_BUCKETS
        ).labels(**labels)
        self.e2e = hist(
            "e2e_request_latency_seconds", "Prompt consumed -> final event.", _LATENCY_BUCKETS
        ).labels(**labels)
        self.running = Gauge(
            PREFIX + "num_requests_running", "Requests in the batch.", names, registry=self.registry
        ).labels(**labels)
        self.waiting = Gauge(
            PREFIX + "num_requests_waiting",
            "Requests consumed, not yet in the batch.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens", "Tokens sampled.", names, registry=self.registry
        ).labels(**labels)
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens prefilled.", names, registry=self.registry
        ).labels(**labels)
        self.publisher_events = Gauge(
            PREFIX + "publisher_queue_events",
            "Events emitted, not yet acknowledged by Kafka (bounded: publisher_max_events).",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.publisher_bytes = Gauge(
            PREFIX + "publisher_queue_bytes",
            "Encoded bytes emitted, not yet acknowledged (bounded: publisher_max_bytes).",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.publisher_waits = Counter(
            PREFIX + "publisher_backpressure_waits",
            "Decode steps that waited for room in the publisher's queue.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.undelivered = Counter(
            PREFIX + "undelivered_events",
            "Events Kafka did not acknowledge (their attempt is run again).",
            names,
            registry=self.registry,
        ).labels(**labels)
        self._success = Counter(
            PREFIX + "request_success",
            "Finished requests.",
            [*names, "finished_reason"],
            registry=self.registry,
        )
        self._failure = Counter(
            PREFIX + "request_failure",
            "Failed requests.",
            [*names, "error_code"],
            registry=self.registry,
        )
        self._labels = labels

    def success(self, reason: str) -> None:
        self._success.labels(**self._labels, finished_reason=reason).inc()

    def failure(self, code: str) -> None:
        self._failure.labels(**self._labels, error_code=code).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
