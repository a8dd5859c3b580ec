"""Every event type through the real broker, idempotent producer, order per key kept."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from infra.clients import ensure_topics, producer_config
from infra.harness import Services, isolated_settings
from infra.settings import InfraSettings
from schemas import Event, ReplicaHeartbeat, decode, encode
from tests.unit.schemas.test_codec import SAMPLES

pytestmark = pytest.mark.integration


def test_topics_have_the_architecture_partition_count(infra_settings: InfraSettings) -> None:
    meta = AdminClient({"bootstrap.servers": infra_settings.kafka_bootstrap}).list_topics(
        timeout=10
    )
    for topic in infra_settings.topics.all():
        assert len(meta.topics[topic].partitions) == 12


def test_every_event_round_trips_through_kafka_in_order_per_key(
    infra_settings: InfraSettings,
) -> None:
    topic = infra_settings.topics.conversations
    producer = Producer(producer_config(infra_settings))
    sent = []
    for conversation in ("conv-a", "conv-b", "conv-c"):
        for i, sample in enumerate(SAMPLES):
            if isinstance(sample, ReplicaHeartbeat):
                continue  # keyed by replica, on chat.replicas: not a conversation's event
            event = type(sample)(
                **{
                    **sample.__dict__,
                    "conversation_id": conversation,
                    "event_id": f"{conversation}-{i}",
                }
            )
            value, headers = encode(event)
            producer.produce(topic, key=event.key, value=value, headers=headers)
            sent.append(event)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": infra_settings.kafka_bootstrap,
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    received: list[Event] = []
    deadline = time.monotonic() + 60
    while len(received) < len(sent) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        event = decode(
            msg.value(),
            msg.headers(),
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
        )
        assert msg.key() == event.key.encode()
        received.append(event)
    consumer.close()
    assert sorted(e.event_id for e in received) == sorted(e.event_id for e in sent)
    for conversation in ("conv-a", "conv-b", "conv-c"):
        assert [e for e in received if e.key == conversation] == [
            e for e in sent if e.key == conversation
        ]


def test_isolated_settings_removes_its_topics_on_exit(services: Services) -> None:
    with isolated_settings(services, "cleanup") as settings:
        names = list(settings.topics.all())
        admin = AdminClient({"bootstrap.servers": services.kafka_bootstrap})
        assert set(names) <= set(admin.list_topics(timeout=10).topics)
    # A deletion is acknowledged before the broker's metadata drops the topic.
    deadline = time.monotonic() + 30
    while set(names) & set(admin.list_topics(timeout=10).topics) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(names) & set(admin.list_topics(timeout=10).topics)


def _topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str | None]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, t) for t in topics])
    return {
        resource.name: {name: entry.value for name, entry in future.result(timeout=15).items()}
        for resource, future in futures.items()
    }


def test_topics_are_created_with_their_retention(infra_settings: InfraSettings) -> None:
    t = infra_settings.topics
    configs = _topic_configs(infra_settings.kafka_bootstrap, list(t.all()))
    retention = {topic: configs[topic]["retention.ms"] for topic in t.all()}
    assert retention == {
        t.conversations: "-1",
        t.answers: "-1",
        t.completions: str(3 * 24 * 3600 * 1000),
        t.dlq: str(30 * 24 * 3600 * 1000),
        t.replicas: "-1",
    }
    for topic in t.all():
        assert configs[topic]["retention.bytes"] == "-1"
        assert configs[topic]["cleanup.policy"] == ("compact" if topic == t.replicas else "delete")


@pytest.fixture
def stray_settings(services: Services) -> Iterator[InfraSettings]:
    """Settings for topics that a test creates itself (no isolated_settings: that would
    already have run ensure_topics); the topics are deleted after."""
    settings = InfraSettings(
        kafka_bootstrap=services.kafka_bootstrap, topic_prefix=f"t_stray_{uuid.uuid4().hex[:6]}."
    )
    yield settings
    admin = AdminClient({"bootstrap.servers": services.kafka_bootstrap})
    for future in admin.delete_topics(list(settings.topics.all()), operation_timeout=10).values():
        with contextlib.suppress(Exception):
            future.result(timeout=15)


def test_ensure_topics_corrects_the_retention_of_existing_topics(
    stray_settings: InfraSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """A topic made with the broker's defaults (or by hand, an hour) gets its retention at start."""
    t = stray_settings.topics
    hour = str(3600 * 1000)
    admin = AdminClient({"bootstrap.servers": stray_settings.kafka_bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(
                t.conversations,
                num_partitions=12,
                replication_factor=1,
                config={"retention.ms": hour},
            ),
            NewTopic(t.answers, num_partitions=12, replication_factor=1),
        ]
    )
    for future in futures.values():
        future.result(timeout=30)

    with caplog.at_level(logging.WARNING, logger="infra.clients"):
        created = ensure_topics(stray_settings)

    assert sorted(created) == sorted([t.completions, t.dlq, t.replicas])
    configs = _topic_configs(stray_settings.kafka_bootstrap, list(t.all()))
    assert configs[t.conversations]["retention.ms"] == "-1"
    assert configs[t.answers]["retention.ms"] == "-1"
    assert configs[t.answers]["retention.bytes"] == "-1"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"topic {t.conversations}: retention.ms was {hour}, set to -1" in warnings
    # The broker's default, 7 days, on the topic created without configs.
    assert f"topic {t.answers}: retention.ms was {7 * 24 * 3600 * 1000}, set to -1" in warnings
    assert not any(t.completions in w or t.dlq in w or t.replicas in w for w in warnings)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="infra.clients"):
        assert ensure_topics(stray_settings) == []
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # nothing to correct
