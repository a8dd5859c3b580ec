"""`decode_if`: the hot path decodes exactly like `decode`, and skips other types unread."""

from __future__ import annotations

import dataclasses

import pytest

from schemas import CorruptEvent, Event, TokenChunk, UnknownEventType, decode, encode
from schemas.codec import decode_if, event_type_of
from schemas.events import EVENT_CLASSES
from tests.unit.schemas.test_codec import SAMPLES

ALL = frozenset(EVENT_CLASSES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_a_wanted_event_decodes_exactly_like_decode(event: Event) -> None:
    value, headers = encode(event)
    fast = decode_if(value, headers, ALL, topic="t", partition=0, offset=1)
    slow = decode(value, headers)
    assert fast == slow == event and type(fast) is type(event)
    assert dataclasses.asdict(fast) == dataclasses.asdict(event)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.event_id = "x"  # type: ignore[misc]


def test_other_types_are_skipped_without_reading_the_body() -> None:
    headers = [("event-type", b"ConversationRenamed"), ("schema-version", b"1")]
    assert decode_if(b"\xff garbage", headers, frozenset({"TokenChunk"})) is None
    assert event_type_of(headers) == "ConversationRenamed"
    assert event_type_of({"event-type": "TokenChunk"}) == "TokenChunk"
    assert event_type_of([("schema-version", b"1")]) is None


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b"\xff\xfe\xfd", [("event-type", b"TokenChunk"), ("schema-version", b"1")]),
        (b"abc", []),
        (None, [("event-type", b"TokenChunk"), ("schema-version", b"1")]),
        (b"abc", [("event-type", b"TokenChunk"), ("schema-version", b"one")]),
        (b"abc", [("event-type", b"\xff\xfe"), ("schema-version", b"1")]),
    ],
)
def test_a_wanted_or_untyped_corrupt_record_is_still_a_typed_error(value, headers) -> None:
    with pytest.raises(CorruptEvent) as err:
        decode_if(value, headers, frozenset({"TokenChunk"}), topic="t", partition=0, offset=7)
    assert err.value.offset == 7


def test_a_wanted_unknown_version_is_a_typed_error() -> None:
    value, headers = encode(next(e for e in SAMPLES if isinstance(e, TokenChunk)))
    bumped = [("event-type", b"TokenChunk"), ("schema-version", b"99")]
    assert headers
    with pytest.raises(UnknownEventType):
        decode_if(value, bumped, frozenset({"TokenChunk"}))


def test_an_unhashable_header_value_takes_the_checked_path() -> None:
    event = next(e for e in SAMPLES if isinstance(e, TokenChunk))
    value, _ = encode(event)
    headers = [("event-type", bytearray(b"TokenChunk")), ("schema-version", b"1")]
    assert decode_if(value, headers, frozenset({"TokenChunk"})) == event  # type: ignore[arg-type]
