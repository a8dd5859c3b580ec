"""The command API's settings: the shared connection settings plus its own knobs."""

from __future__ import annotations

from typing import Literal

from infra.settings import InfraSettings


class CommandSettings(InfraSettings):
    """Env prefix `CHATLOG_` (inherited); e.g. `CHATLOG_COMMAND_PORT`, `CHATLOG_RATE_LIMIT_PER_MIN`."""

    command_host: str = "127.0.0.1"
    command_port: int = 8000
    # uvicorn worker processes; all state is in Postgres/Kafka, so workers share the limits.
    command_workers: int = 1
    query_api_url: str = "http://127.0.0.1:8001"

    # What a prompt without `stream` answers: "wait" = the OpenAI default (a `chat.completion`
    # once finished, what the official clients expect); "async" = 202 at once.
    # `Prefer: respond-async` is always 202.
    default_response: Literal["async", "wait"] = "wait"

    # Input limits.
    max_body_bytes: int = 1_048_576
    max_messages: int = 256
    max_message_chars: int = 100_000
    max_context_chars: int = 400_000
    # A composed context must fit one Kafka record (brokers default to 1 MiB).
    max_event_bytes: int = 900_000
    max_tokens_limit: int = 4096
    default_max_tokens: int = 512
    max_title_chars: int = 200

    # Rate limits (0 disables one): prompts per sliding minute, concurrent generations.
    rate_limit_per_min: int = 60
    rate_limit_window_s: float = 60.0
    max_concurrent_generations: int = 8
    # Prompt + completion tokens per user per UTC day (0 = off), as the usage meter counts
    # them (a projection: see command_api/quota.py for how far it may trail).
    token_quota_per_day: int = 0
    # A generation counts as running for at most this long (a lost one must not block forever).
    generation_horizon_s: float = 600.0
    # ... and only while its lease holds: admitted this recently, or with progress in the read
    # model this recent. So a stopped projection frees every slot within the lease.
    generation_lease_s: float = 60.0

    # Bounded waits.
    continuation_wait_s: float = 5.0
    kafka_send_timeout_s: float = 3.0
    startup_timeout_s: float = 30.0
    # False: serve even when Kafka is unreachable after start-up (prompts answer 503, /readyz
    # fails, a background task keeps reconnecting). Postgres is always required.
    require_kafka_at_startup: bool = True
    completion_wait_timeout_s: float = 300.0
    idempotency_ttl_s: float = 86_400.0
    # A key pending longer than this belongs to a request whose process failed: longer than
    # any accept takes (its waits are continuation_wait_s and kafka_send_timeout_s).
    idempotency_pending_s: float = 60.0

    # Circuit breaker per model (breaker.py): opens with no live replica, or when at least
    # breaker_min_calls outcomes in breaker_window_s failed at breaker_failure_rate or more;
    # half-opens after breaker_cooldown_s.
    breaker_window_s: float = 30.0
    breaker_min_calls: int = 5
    breaker_failure_rate: float = 0.5
    breaker_cooldown_s: float = 5.0

    pg_pool_min: int = 2
    pg_pool_max: int = 16
    # Group commit of admissions (batching.py): at most this many admission round trips in
    # flight; prompts arriving meanwhile share the next one (up to admit_batch_max each).
    admit_concurrency: int = 1
    admit_batch_max: int = 64
    # None: infra's producer default (linger 1 ms, chosen for latency).
    kafka_linger_ms: int | None = None
