"""The processors' settings: the shared infrastructure settings plus projection knobs."""

from __future__ import annotations

from infra.settings import InfraSettings


class ProcessorSettings(InfraSettings):
    """Env prefix `CHATLOG_` like every chatlog service (e.g. `CHATLOG_BATCH_MAX_EVENTS`)."""

    projections: str = "postgres,search,usage"  # which `python -m processors` runs
    batch_max_events: int = 5000  # one fetch, one fold, one transaction
    batch_wait_ms: int = 50  # how long a fetch waits to fill a batch
    # Meilisearch pays ~0.3-0.9 s per task whatever its size: fewer, bigger batches.
    search_batch_max_events: int = 50000
    search_batch_wait_ms: int = 2000
    apply_retries: int = 3  # attempts at a non-transient failure before isolating poison
    metrics_port: int = 9102  # Prometheus /metrics; 0 = off
    swap_max_lag: int = 2000  # a rebuild switches over once it is this close to the live end
    group_prefix: str = "chatlog-"

    def group_id(self, projection: str) -> str:
        """The consumer group of a projection (prefixed like topics, to isolate tenants)."""
        return f"{self.topic_prefix}{self.group_prefix}projection-{projection}"

    @property
    def enabled_projections(self) -> list[str]:
        return [p.strip() for p in self.projections.split(",") if p.strip()]
