"""Every event type through the real broker, idempotent producer, order per key kept."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from infra.clients import producer_config
from infra.harness import Services, isolated_settings
from infra.settings import InfraSettings
from schemas import Event, decode, encode
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
    assert not set(names) & set(admin.list_topics(timeout=10).topics)
