"""Client factories: Kafka producers/admin, Postgres connections, Meilisearch.

Producers are idempotent with acks=all (ARCHITECTURE §2) and linger briefly on purpose:
Kafka 4 clients default to 5 ms, which would sit inside every time-to-first-token.
"""

from __future__ import annotations

import logging
import select
import time
from typing import Any

import meilisearch
import psycopg
from aiokafka import AIOKafkaProducer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from psycopg_pool import AsyncConnectionPool

from infra.settings import InfraSettings
from schemas.resources import MESSAGES_INDEX, read_model_ddl, search_index_spec

PRODUCER_LINGER_MS = 1

log = logging.getLogger(__name__)


def producer_config(settings: InfraSettings, **overrides: Any) -> dict[str, Any]:
    """confluent-kafka producer config: idempotent, acks=all, short linger."""
    return {
        **settings.confluent_kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": PRODUCER_LINGER_MS,
        **overrides,
    }


def aio_producer(settings: InfraSettings, **overrides: Any) -> AIOKafkaProducer:
    """aiokafka producer: idempotent, acks=all, short linger. Call `await p.start()`."""
    options: dict[str, Any] = {
        **settings.aiokafka_options(),
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": PRODUCER_LINGER_MS,
        **overrides,
    }
    return AIOKafkaProducer(**options)


def topic_configs(settings: InfraSettings) -> dict[str, dict[str, str]]:
    """Each topic's retention, set explicitly: the broker's default (7 days) would delete the
    events every read model, index and rebuild comes from.

    chat.conversations and chat.answers are the source of truth (unlimited); chat.completions'
    token chunks only serve live and resumed streams (`completions_retention_ms`); chat.dlq
    keeps copies of poison records long enough for an operator to fix and re-publish them
    (`dlq_retention_ms`). `min.insync.replicas` comes with the replication factor
    (settings): with acks=all it is what makes an acknowledged write survive a broker's
    death. Size never deletes anything (`retention.bytes=-1`) and nothing is
    compacted (`cleanup.policy=delete`): every event of a key matters, not only its last --
    except chat.replicas, whose beats only matter as each replica's latest.
    """

    isr = {"min.insync.replicas": str(settings.min_insync_replicas)}

    def config(retention_ms: int) -> dict[str, str]:
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(retention_ms),
            "retention.bytes": "-1",
            **isr,
        }

    t = settings.topics
    return {
        t.conversations: config(-1),
        t.completions: config(settings.completions_retention_ms),
        t.answers: config(-1),
        t.dlq: config(settings.dlq_retention_ms),
        # chat.replicas is the one compacted topic: only each replica's last beat matters.
        t.replicas: {
            "cleanup.policy": "compact",
            "retention.ms": "-1",
            "retention.bytes": "-1",
            **isr,
        },
    }


def ensure_topics(settings: InfraSettings, timeout_s: float = 30.0) -> list[str]:
    """Create the architecture's topics where missing, with their partition count and
    `topic_configs`; on topics that exist, correct any config that differs (with a warning).

    Returns the topics it created. Every service and `chatlog up` call it at start, so a
    topic created by hand or by an older release gets its retention before anything runs.
    """
    admin = AdminClient(settings.confluent_kafka_config())
    configs = topic_configs(settings)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [t for t in settings.topics.all() if t not in existing]
    created: list[str] = []
    if wanted:
        futures = admin.create_topics(
            [
                NewTopic(
                    t,
                    num_partitions=settings.partitions,
                    replication_factor=settings.replication_factor,
                    config=configs[t],
                )
                for t in wanted
            ],
            operation_timeout=timeout_s,
        )
        for topic, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                created.append(topic)
            except Exception as exc:  # a concurrent creator won the race: fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise RuntimeError(f"could not create topic {topic}: {exc}") from exc
        # Creation is acknowledged before every broker's metadata shows the topic.
        deadline = time.monotonic() + timeout_s
        while not set(wanted) <= set(admin.list_topics(timeout=timeout_s).topics):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {wanted} not visible after {timeout_s}s")
            time.sleep(0.1)
    # Topics that existed, and those a concurrent creator made with other configs.
    correct_topic_configs(admin, configs, timeout_s)
    return created


ConfigDiff = dict[str, dict[str, tuple[str | None, str]]]  # {topic: {config: (old, new)}}


def correct_topic_configs(
    admin: AdminClient, configs: dict[str, dict[str, str]], timeout_s: float
) -> ConfigDiff:
    """Set every config in `configs` that a topic lacks, logging a WARNING per change, and
    wait until the broker describes the new values (an alter is acknowledged before its
    metadata is applied). Returns what was changed.

    An incremental alter touches only the named configs, never a topic's others.
    """
    changes = _config_diff(admin, configs, timeout_s)
    if not changes:
        return changes
    alters = [
        ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry(name, new, incremental_operation=AlterConfigOpType.SET)
                for name, (_old, new) in diff.items()
            ],
        )
        for topic, diff in changes.items()
    ]
    for resource, future in admin.incremental_alter_configs(
        alters, request_timeout=timeout_s
    ).items():
        future.result(timeout=timeout_s)
        for name, (old, new) in changes[resource.name].items():
            log.warning("topic %s: %s was %s, set to %s", resource.name, name, old, new)
    deadline = time.monotonic() + timeout_s
    while pending := _config_diff(admin, configs, timeout_s):
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic configs not applied after {timeout_s}s: {pending}")
        time.sleep(0.1)
    return changes


def _config_diff(
    admin: AdminClient, configs: dict[str, dict[str, str]], timeout_s: float
) -> ConfigDiff:
    """The configs in `configs` whose described value differs (None: not described)."""
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in configs]
    changes: ConfigDiff = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
        current = future.result(timeout=timeout_s)
        diff = {
            name: (current[name].value if name in current else None, value)
            for name, value in configs[resource.name].items()
            if name not in current or current[name].value != value
        }
        if diff:
            changes[resource.name] = diff
    return changes


def pg_connect(settings: InfraSettings, **kwargs: Any) -> psycopg.Connection[Any]:
    """A synchronous Postgres connection to the read-model database."""
    return psycopg.connect(settings.postgres_url, connect_timeout=10, **kwargs)


async def apg_connect(settings: InfraSettings, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """An asynchronous Postgres connection to the read-model database."""
    return await psycopg.AsyncConnection.connect(
        settings.postgres_url, connect_timeout=10, **kwargs
    )


async def check_idle_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """A pool's check on checkout: a round trip only for a connection that looks broken.

    A pooled connection is idle, so its socket has nothing to read unless the server wrote
    to it: a Postgres restart or `pg_terminate_backend` sends FATAL and closes it. Such a
    connection (or any with unexpected input) gets psycopg's full check, which fails and
    makes the pool discard it; a quiet one is handed out at once. Checking every checkout
    with a round trip (`check_connection`) doubled the Postgres round trips of a prompt.
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        await AsyncConnectionPool.check_connection(conn)


def apply_read_model_ddl(settings: InfraSettings) -> None:
    """Apply `schemas/postgres/*.sql` (idempotent), under an advisory lock against races."""
    with pg_connect(settings, autocommit=False) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(774411)")
        for _name, sql in read_model_ddl():
            conn.execute(sql)  # type: ignore[arg-type]  # our own trusted DDL files
        conn.commit()


def meili_client(settings: InfraSettings) -> meilisearch.Client:
    """A Meilisearch client; raises if no Meilisearch is configured."""
    if not settings.meili_url:
        raise RuntimeError("no Meilisearch configured (CHATLOG_MEILI_URL is empty)")
    return meilisearch.Client(settings.meili_url, settings.meili_key, timeout=10)


def ensure_search_index(settings: InfraSettings, base: str = MESSAGES_INDEX) -> str:
    """Create the index with the settings in `schemas/search/` and wait until applied."""
    client = meili_client(settings)
    spec = search_index_spec(base)
    name = settings.index_name(base)
    task = client.create_index(name, {"primaryKey": spec["primaryKey"]})
    client.wait_for_task(task.task_uid, timeout_in_ms=30_000)  # fails harmlessly if it exists
    task = client.index(name).update_settings(spec["settings"])
    done = client.wait_for_task(task.task_uid, timeout_in_ms=30_000)
    if done.status != "succeeded":
        raise RuntimeError(f"meilisearch rejected settings for {name}: {done.error}")
    return name
