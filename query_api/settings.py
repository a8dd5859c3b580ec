"""The query API's one settings class (env prefix `CHATLOG_`, like every service)."""

from __future__ import annotations

from infra.settings import InfraSettings


class QuerySettings(InfraSettings):
    """Connection settings plus the read side's own knobs."""

    query_host: str = "127.0.0.1"
    query_port: int = 8001
    # this process among the `query_instances` (InfraSettings): which share of the
    # chat.completions partitions its hub reads (query_api.hub_share)
    query_instance: int = 0
    query_pool_size: int = 10
    # a read waits this long for a Postgres connection, then answers 503 (never hangs)
    query_pool_timeout_s: float = 5.0
    # start-up: wait for Postgres and Kafka this many times, `startup_backoff_s` apart
    startup_attempts: int = 30
    startup_backoff_s: float = 1.0
    # the hub's fetches: at most this much added delay, to batch records per fetch
    hub_fetch_wait_ms: int = 10
    hub_fetch_min_bytes: int = 65536
    # SSE
    heartbeat_s: float = 15.0
    client_queue_size: int = 256  # events a slow client may lag before it is told to reconnect
    # the hub keeps a finished request's buffer this long, so "finished a second ago" is
    # served from memory while the projection catches up
    finished_ttl_s: float = 60.0
    idle_ttl_s: float = 900.0  # a non-terminal request silent this long is dropped from memory
    hub_sweep_s: float = 5.0  # how often the TTLs above are applied
    # ... and whatever the TTLs, the hub holds at most this many requests and bytes (the
    # least recently active go first; a request dropped from memory streams from Postgres)
    hub_max_requests: int = 20_000
    hub_max_bytes: int = 256 * 1024 * 1024
    owners_max: int = 200_000  # request -> user entries learnt from chat.conversations
    # catch-up of a request the hub joined mid-way
    owner_wait_s: float = 3.0  # unknown request: wait this long for its PromptSubmitted
    projection_wait_s: float = 2.0  # wait this long for Postgres to fill a gap ...
    backfill_lookback_s: float = 3600.0  # ... then re-read Kafka from this far back
    idle_poll_s: float = 2.0  # a waiting stream re-checks Postgres this often
    backfill_concurrency: int = 4  # Kafka backfills at once per process; the rest queue
    # a stream that got no event for this long ends with an error (`stream_timeout`):
    # every stream ends, even one for which no source ever answers
    stream_idle_timeout_s: float = 900.0
    search_max_limit: int = 50
