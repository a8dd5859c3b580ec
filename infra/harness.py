"""Test infrastructure: real Kafka, Postgres and Meilisearch for the test suite.

`CHATLOG_TEST_SERVICES` picks where they come from: `docker` (testcontainers), `local`
(the launcher, under `CHATLOG_TEST_HOME`, on ports apart from the dev stack's) or `auto`
(docker when an engine answers, else local). Each test module then gets its own topic
prefix, database and index prefix (`isolated_settings`), so modules never see each
other's data. Same fixtures, same tests, whichever source.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient

from infra.auth import apply_auth_ddl
from infra.clients import apply_read_model_ddl, ensure_search_index, ensure_topics, pg_connect
from infra.local import LocalStack
from infra.settings import LOCAL_MEILI_KEY, InfraSettings

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
POSTGRES_IMAGE = "postgres:16-alpine"
MEILI_IMAGE = "getmeili/meilisearch:v1.21"


@dataclass(frozen=True)
class Services:
    """Where the shared test services are. `postgres_url` has superuser rights."""

    kafka_bootstrap: str
    postgres_url: str
    meili_url: str
    meili_key: str
    home: Path
    source: str  # "docker" or "local"
    stack: LocalStack | None = None

    @classmethod
    def local(cls, stack: LocalStack) -> Services:
        """The services a local launcher stack provides."""
        s = stack.settings
        return cls(s.kafka_bootstrap, s.postgres_url, s.meili_url or "", s.meili_key,
                   Path(s.home), "local", stack)  # fmt: skip


def docker_available() -> bool:
    """True when a Docker engine answers a ping."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


def harness_mode() -> str:
    mode = os.environ.get("CHATLOG_TEST_SERVICES", "auto")
    if mode not in ("auto", "docker", "local"):
        raise ValueError(f"CHATLOG_TEST_SERVICES must be auto, docker or local, not {mode!r}")
    if mode == "auto":
        return "docker" if docker_available() else "local"
    return mode


@contextlib.contextmanager
def provide_services() -> Iterator[Services]:
    """Start (or reuse) the services for one test session."""
    if harness_mode() == "docker":
        with _docker_services() as services:
            yield services
    else:
        with _local_services() as services:
            yield services


@contextlib.contextmanager
def _local_services() -> Iterator[Services]:
    home = Path(os.environ.get("CHATLOG_TEST_HOME", ".chatlog/test")).absolute()
    # Apart from the dev stack's ports; an offset lets two checkouts test side by side.
    offset = int(os.environ.get("CHATLOG_TEST_PORT_OFFSET", "0"))
    settings = InfraSettings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{29092 + offset}",
        postgres_url=f"postgresql://chatlog@127.0.0.1:{25432 + offset}/chatlog",
        meili_url=f"http://127.0.0.1:{27700 + offset}",
        meili_key=LOCAL_MEILI_KEY,
    )
    stack = LocalStack(settings)
    already = all(s.healthy for s in stack.status())
    if not already:
        stack.install()
    try:
        if not already:
            stack.start()  # inside: a start that fails part-way stops what it did start
        yield Services.local(stack)
    finally:
        if not already and os.environ.get("CHATLOG_TEST_KEEP") != "1":
            stack.stop()


@contextlib.contextmanager
def _docker_services() -> Iterator[Services]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    meili = (
        DockerContainer(MEILI_IMAGE)
        .with_exposed_ports(7700)
        .with_env("MEILI_MASTER_KEY", LOCAL_MEILI_KEY)
        .with_env("MEILI_NO_ANALYTICS", "true")
    )
    with (
        KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka,
        PostgresContainer(POSTGRES_IMAGE, driver=None) as pg,
        meili,
    ):
        url = f"http://{meili.get_container_host_ip()}:{meili.get_exposed_port(7700)}"
        _wait_http(url + "/health")
        home = Path(os.environ.get("CHATLOG_TEST_HOME", ".chatlog/test")).absolute()
        yield Services(
            kafka.get_bootstrap_server(),
            pg.get_connection_url(),
            url,
            LOCAL_MEILI_KEY,
            home,
            "docker",
        )


def _wait_http(url: str, timeout_s: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _safe_name(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[-40:]
    return f"t_{slug}_{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def isolated_settings(services: Services, name: str) -> Iterator[InfraSettings]:
    """InfraSettings with a private topic prefix, database and index prefix; removed after."""
    slug = _safe_name(name)
    with psycopg.connect(services.postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{slug}"')  # type: ignore[arg-type]  # slug is [a-z0-9_]
    base = services.postgres_url.rsplit("/", 1)[0]
    settings = InfraSettings(
        home=services.home,
        kafka_bootstrap=services.kafka_bootstrap,
        topic_prefix=f"{slug}.",
        postgres_url=f"{base}/{slug}",
        meili_url=services.meili_url,
        meili_key=services.meili_key,
        index_prefix=f"{slug}_",
    )
    ensure_topics(settings)
    apply_read_model_ddl(settings)
    with pg_connect(settings) as conn:
        apply_auth_ddl(conn)
    ensure_search_index(settings)
    try:
        yield settings
    finally:
        delete_topics(services.kafka_bootstrap, list(settings.topics.all()))
        with psycopg.connect(services.postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{slug}" WITH (FORCE)')  # type: ignore[arg-type]


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Delete and WAIT, holding the client: a request in flight dies with its AdminClient
    (its futures do not keep it alive), and the topics pile up on the shared broker
    (1,500 leftover topics made every broker task slower)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.delete_topics(topics, operation_timeout=10)
    for future in futures.values():
        with contextlib.suppress(Exception):  # already gone, or the broker is: nothing to do
            future.result(timeout=15)
