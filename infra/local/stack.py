"""The three local services together: install, start, stop, status."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.local.kafka import KafkaNode
from infra.local.meili import MeiliNode
from infra.local.postgres import PostgresNode
from infra.settings import InfraSettings, port_of


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    installed: bool
    running: bool
    healthy: bool
    where: str


class LocalStack:
    """Kafka, PostgreSQL and Meilisearch under `settings.home`, on the ports in `settings`."""

    def __init__(self, settings: InfraSettings) -> None:
        self.settings = settings
        home = Path(settings.home).absolute()
        self.kafka = KafkaNode(home, port_of(settings.kafka_bootstrap, 9092))
        self.postgres = PostgresNode(home, port_of(settings.postgres_url, 5432))
        self.meili = (
            MeiliNode(home, port_of(settings.meili_url, 7700), settings.meili_key)
            if settings.meili_url
            else None
        )

    @property
    def nodes(self) -> list[KafkaNode | PostgresNode | MeiliNode]:
        return [n for n in (self.postgres, self.kafka, self.meili) if n is not None]

    def install(self) -> None:
        """Fetch everything set-up pins (idempotent; nothing is fetched at run time)."""
        for node in self.nodes:
            node.install()

    def start(self) -> None:
        """Start every service and create the architecture's topics."""
        from infra.clients import ensure_topics

        for node in self.nodes:
            node.start()
        ensure_topics(self.settings)

    def stop(self) -> list[str]:
        """Stop every service; returns the names of those that were running."""
        return [n.name for n in reversed(self.nodes) if n.stop()]

    def status(self) -> list[ServiceStatus]:
        out = []
        for node, where in (
            (self.kafka, self.settings.kafka_bootstrap),
            (self.postgres, self.settings.postgres_url),
            (self.meili, self.settings.meili_url or ""),
        ):
            if node is None:
                continue
            running = node.running()
            healthy = False
            if running:
                try:
                    healthy = node.healthy()
                except Exception:
                    healthy = False
            out.append(ServiceStatus(node.name, node.installed(), running, healthy, where))
        return out
