"""The event contract: every event round-trips; old versions decode; garbage is a typed error."""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest

from schemas import (
    BranchSwitched,
    CancelRequested,
    ChatMessage,
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    ConversationDeleted,
    ConversationRenamed,
    CorruptEvent,
    Event,
    GenerationParams,
    PromptSubmitted,
    ReplicaHeartbeat,
    TokenChunk,
    UnknownEventType,
    Usage,
    decode,
    encode,
)
from schemas.codec import current_version, schema_registry
from schemas.events import EVENT_CLASSES

SAMPLES: list[Event] = [
    PromptSubmitted(
        request_id="r1",
        conversation_id="c1",
        user_id="u1",
        model="smollm2",
        messages=(ChatMessage("system", "be brief"), ChatMessage("user", "héllo ✓ 你好")),
        params=GenerationParams(max_tokens=64, temperature=0.7, top_p=0.9, stop=("\n\n",), seed=7),
        parent_request_id="r0",
        idempotency_key="k1",
        traceparent="00-abc-def-01",
    ),
    PromptSubmitted(
        request_id="r2",
        conversation_id="c1",
        user_id="u1",
        model="smollm2",
        messages=(ChatMessage("user", "hello again"),),
        params=GenerationParams(max_tokens=64),
        parent_request_id="r0",
        branch="regenerate",
        sibling_of="r1",
    ),
    CancelRequested(request_id="r1", conversation_id="c1", user_id="u1"),
    BranchSwitched(conversation_id="c1", user_id="u1", request_id="r0"),
    ConversationRenamed(conversation_id="c1", user_id="u1", title="Trip to Lisbon"),
    ConversationDeleted(conversation_id="c1", user_id="u1"),
    CompletionStarted(
        request_id="r1", conversation_id="c1", attempt=1, replica_id="rep-a", model="m"
    ),
    TokenChunk(request_id="r1", conversation_id="c1", attempt=1, seq=0, text="Hel", token_count=2),
    CompletionFinished(
        request_id="r1",
        conversation_id="c1",
        attempt=1,
        finish_reason="length",
        usage=Usage(prompt_tokens=12, completion_tokens=64),
        ttft_ms=41.5,
    ),
    CompletionFailed(
        request_id="r1",
        conversation_id="c1",
        attempt=2,
        error_code="context_too_long",
        message="prompt is 9000 tokens",
        retryable=False,
    ),
    ReplicaHeartbeat(
        replica_id="rep-a", model="m", state="serving", running=2, waiting=1, interval_ms=1000,
        ttft_ms=35.0,
    ),
]


def test_every_event_type_has_a_sample_and_a_schema() -> None:
    assert {type(e).event_type for e in SAMPLES} == set(EVENT_CLASSES)
    assert {t for t, _ in schema_registry()} == set(EVENT_CLASSES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: Event) -> None:
    value, headers = encode(event)
    version = str(current_version(type(event).event_type)).encode()
    assert dict(headers) == {"event-type": type(event).event_type.encode(), "schema-version": version}
    assert decode(value, headers) == event


def test_completion_finished_v2_carries_the_text_and_v1_reads_as_none() -> None:
    """The answer outlives its chunks: v2 holds the text; a v1 record decodes with None."""
    finished = CompletionFinished(
        request_id="r1", conversation_id="c1", attempt=1, finish_reason="stop",
        usage=Usage(prompt_tokens=3, completion_tokens=2), text="héllo ✓",
    )  # fmt: skip
    value, headers = encode(finished)
    assert dict(headers)["schema-version"] == b"2"
    assert decode(value, headers) == finished
    record = fastavro.schemaless_reader(io.BytesIO(value), schema_registry()[("CompletionFinished", 2)])
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema_registry()[("CompletionFinished", 1)], record)
    v1 = [("event-type", b"CompletionFinished"), ("schema-version", b"1")]
    old = decode(buf.getvalue(), v1)
    assert isinstance(old, CompletionFinished) and old.text is None


def test_occurred_at_is_utc_millis() -> None:
    event = ConversationDeleted(
        conversation_id="c",
        user_id="u",
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    )
    value, headers = encode(event)
    assert decode(value, headers).occurred_at == event.occurred_at


@pytest.mark.parametrize("key", sorted(schema_registry()), ids=lambda k: f"{k[0]}.v{k[1]}")
def test_every_known_writer_version_decodes_with_the_current_reader(key: tuple[str, int]) -> None:
    event_type, version = key
    sample = next(e for e in SAMPLES if type(e).event_type == event_type)
    current, headers = encode(sample)
    reader = schema_registry()[(event_type, current_version(event_type))]
    record = fastavro.schemaless_reader(io.BytesIO(current), reader)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema_registry()[key], record)
    headers = [("event-type", event_type.encode()), ("schema-version", str(version).encode())]
    assert decode(buf.getvalue(), headers) == sample


def test_a_writer_without_a_defaulted_field_decodes_with_the_reader_default(monkeypatch) -> None:
    """Schema evolution: an older writer that lacked `traceparent` still decodes."""
    registry = dict(schema_registry())
    raw = json.loads(json.dumps(_raw_schema("ConversationRenamed")))
    raw["fields"] = [f for f in raw["fields"] if f["name"] != "traceparent"]
    old = fastavro.parse_schema(copy.deepcopy(raw))
    registry[("ConversationRenamed", 0)] = old
    monkeypatch.setattr("schemas.codec.schema_registry", lambda: registry)
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        old,
        {
            "event_id": "e",
            "occurred_at": datetime.now(UTC),
            "conversation_id": "c",
            "user_id": "u",
            "title": "t",
        },
    )
    event = decode(
        buf.getvalue(), [("event-type", b"ConversationRenamed"), ("schema-version", b"0")]
    )
    assert isinstance(event, ConversationRenamed)
    assert (event.title, event.traceparent) == ("t", None)


def _raw_schema(name: str) -> dict[str, Any]:
    from pathlib import Path

    import schemas

    raw: dict[str, Any] = json.loads(
        (Path(schemas.__file__).parent / "avro" / f"{name}.v1.avsc").read_text()
    )
    return raw


def test_unknown_event_type_is_a_typed_error_naming_its_position() -> None:
    value, _ = encode(SAMPLES[1])
    with pytest.raises(UnknownEventType) as err:
        decode(
            value,
            [("event-type", b"Nope"), ("schema-version", b"1")],
            topic="chat.conversations",
            partition=3,
            offset=42,
        )
    assert (err.value.topic, err.value.partition, err.value.offset) == ("chat.conversations", 3, 42)
    assert "offset=42" in str(err.value)


def test_unknown_version_is_a_typed_error() -> None:
    value, _ = encode(SAMPLES[1])
    with pytest.raises(UnknownEventType):
        decode(value, [("event-type", b"CancelRequested"), ("schema-version", b"99")])


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b"\xff\xfe\xfd", [("event-type", b"TokenChunk"), ("schema-version", b"1")]),
        (b"", [("event-type", b"PromptSubmitted"), ("schema-version", b"1")]),
        (b"abc", []),
        (None, [("event-type", b"TokenChunk"), ("schema-version", b"1")]),
        (b"abc", [("event-type", b"TokenChunk"), ("schema-version", b"one")]),
    ],
)
def test_corrupt_records_are_typed_errors(value, headers) -> None:
    with pytest.raises(CorruptEvent) as err:
        decode(value, headers, topic="t", partition=0, offset=7)
    assert err.value.offset == 7


def test_trailing_garbage_is_corrupt() -> None:
    value, headers = encode(SAMPLES[1])
    with pytest.raises(CorruptEvent):
        decode(value + b"\x00\x01", headers)


def test_key_is_the_conversation_id_but_a_heartbeat_is_keyed_by_its_replica() -> None:
    assert all(e.key == "c1" for e in SAMPLES if not isinstance(e, ReplicaHeartbeat))
    assert next(e for e in SAMPLES if isinstance(e, ReplicaHeartbeat)).key == "rep-a"
