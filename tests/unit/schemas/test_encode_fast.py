"""`schemas.wire.encode_fast` (the accept path's encoder) must be `encode`, byte for byte."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from schemas import ChatMessage, ConversationRenamed, GenerationParams, PromptSubmitted, decode
from schemas.codec import encode
from schemas.wire import encode_fast

TEXTS = [
    "",
    "a",
    "héllo wörld",
    "日本語のテキスト",
    "emoji 🎉🚀",
    "x" * 200,
    "y" * 70_000,
    "\x00\n\t",
]


def _random_prompt(rng: random.Random) -> PromptSubmitted:
    def text() -> str:
        return rng.choice(TEXTS) + str(rng.randrange(10 ** rng.randrange(1, 12)))

    def maybe() -> str | None:
        return None if rng.random() < 0.5 else text()

    seed = rng.choice([None, 0, 1, -1, 63, -64, 64, 2**31, -(2**40), 2**63 - 1, -(2**63)])
    return PromptSubmitted(
        request_id=text(),
        conversation_id=text(),
        user_id=text(),
        model=text(),
        messages=tuple(
            ChatMessage(role=rng.choice(["system", "user", "assistant"]), content=text())
            for _ in range(rng.randrange(0, 5))
        ),
        params=GenerationParams(
            max_tokens=rng.choice([1, 16, 63, 64, 4096, 2**31 - 1, -(2**31)]),
            temperature=rng.choice([0.0, 0.7, 1.0, 2.0, 1e-300, -0.0]),
            top_p=rng.random(),
            stop=tuple(text() for _ in range(rng.randrange(0, 5))),
            seed=seed,
        ),
        parent_request_id=maybe(),
        idempotency_key=maybe(),
        traceparent=maybe(),
        occurred_at=datetime(1970, 1, 1, tzinfo=UTC)
        + timedelta(microseconds=rng.randrange(-(10**16), 10**17)),
    )


def test_encode_fast_is_encode_byte_for_byte_on_many_prompts():
    rng = random.Random(20261127)
    for _ in range(3000):
        event = _random_prompt(rng)
        assert encode_fast(event) == encode(event), event
    event = _random_prompt(rng)
    value, headers = encode_fast(event)
    assert decode(value, headers) == decode(*encode(event))  # (timestamps: millisecond)


@pytest.mark.parametrize(
    "change",
    [
        {"occurred_at": datetime(2026, 1, 1, 12, 0, 0, 123456)},  # naive
        {"params": GenerationParams(max_tokens=16, temperature=1)},  # an int double
        {"params": GenerationParams(max_tokens=2**40)},  # past Avro's int
        {"params": GenerationParams(max_tokens=True)},  # type: ignore[arg-type]
    ],
)
def test_what_the_fast_path_was_not_written_for_goes_through_encode(change):
    base = _random_prompt(random.Random(1))
    event = PromptSubmitted(**{**base.__dict__, **change})
    try:
        expected: object = encode(event)
    except Exception as exc:  # whatever encode raises, encode_fast must
        with pytest.raises(type(exc)):
            encode_fast(event)
    else:
        assert encode_fast(event) == expected


def test_a_wrong_type_in_a_string_field_fails_as_encode_fails():
    base = _random_prompt(random.Random(2))
    for field in ("request_id", "traceparent"):
        event = PromptSubmitted(**{**base.__dict__, field: 42})
        with pytest.raises(Exception) as fast_exc:
            encode_fast(event)
        with pytest.raises(type(fast_exc.value)):
            encode(event)


def test_other_events_are_encoded_by_encode():
    event = ConversationRenamed(conversation_id="c", user_id="u", title="t")
    assert encode_fast(event) == encode(event)
