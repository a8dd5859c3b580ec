"""The local services together: install, start, stop, status.

Kafka runs one node per entry of the bootstrap list (three make the cluster profile's
quorum); Ray nodes run only where `ray_nodes` asks for them (else inference starts its own).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from infra.local.kafka import KafkaNode
from infra.local.meili import MeiliNode
from infra.local.postgres import PostgresNode
from infra.local.ray import RayNode
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
        peers = tuple(port_of(b, 9092) for b in settings.kafka_brokers)
        self.brokers = [KafkaNode(home, port, peers=peers) for port in peers]
        self.kafka = self.brokers[0]
        self.ray = [
            RayNode(home, i, settings.ray_port, object_store_bytes=settings.ray_object_store_bytes)
            for i in range(settings.ray_nodes)
        ]
        self.postgres = PostgresNode(home, port_of(settings.postgres_url, 5432))
        self.meili = (
            MeiliNode(home, port_of(settings.meili_url, 7700), settings.meili_key)
            if settings.meili_url
            else None
        )

    @property
    def nodes(self) -> list[KafkaNode | PostgresNode | MeiliNode | RayNode]:
        meili = [self.meili] if self.meili is not None else []
        return [self.postgres, *self.brokers, *meili, *self.ray]

    def install(self) -> None:
        """Fetch everything set-up pins (idempotent; nothing is fetched at run time)."""
        for node in self.nodes:
            node.install()

    def start(self) -> None:
        """Start every service and create the architecture's topics."""
        from infra.clients import ensure_topics

        for node in self.nodes:
            if isinstance(node, KafkaNode) and len(self.brokers) > 1:
                node.start(wait=False)  # ready only once a quorum of its peers runs
            else:
                node.start()
        for broker in self.brokers:
            broker.wait_ready()
        ensure_topics(self.settings)

    def stop(self) -> list[str]:
        """Stop every service, in the reverse of `nodes`' order; returns the names of
        those that were running.

        The brokers stop together: one by one, the last ones lose their controller quorum
        (a majority of the voters) and cannot finish a clean shutdown, so each sat out its
        stop timeout (30 s) before its SIGKILL."""
        stopped = [n.name for n in reversed(self.ray) if n.stop()]
        if self.meili is not None and self.meili.stop():
            stopped.append(self.meili.name)
        with ThreadPoolExecutor(max(1, len(self.brokers))) as pool:
            done = list(pool.map(KafkaNode.stop, reversed(self.brokers)))
        stopped += [b.name for b, ok in zip(reversed(self.brokers), done, strict=True) if ok]
        if self.postgres.stop():
            stopped.append(self.postgres.name)
        return stopped

    def status(self) -> list[ServiceStatus]:
        out = []
        pairs: list[tuple[KafkaNode | PostgresNode | MeiliNode | RayNode | None, str]] = [
            *((b, f"127.0.0.1:{b.port}") for b in self.brokers),
            (self.postgres, self.settings.postgres_url),
            (self.meili, self.settings.meili_url or ""),
            *((r, r.address if r.index == 0 else f"127.0.0.1:{r.port}") for r in self.ray),
        ]
        for node, where in pairs:
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
