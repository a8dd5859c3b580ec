"""OpenAI body validation: what is accepted, and the 400 (param, code) for what is not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from command_api.settings import CommandSettings
from command_api.validation import parse_body
from infra.http import BadRequest

SETTINGS = CommandSettings(models="m-small,m-big", max_tokens_limit=100, default_max_tokens=50)


def body(**over: Any) -> bytes:
    base: dict[str, Any] = {"model": "m-small", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({**base, **over}).encode()


def refused(raw: bytes) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_body(raw, SETTINGS)
    return info.value


def test_minimal_body_gets_defaults() -> None:
    p = parse_body(body(), SETTINGS)
    assert p.model == "m-small" and p.stream is None and not p.include_usage
    assert p.params.max_tokens == 50 and p.params.temperature == 1.0 and p.params.top_p == 1.0
    assert p.params.stop == () and p.params.seed is None


def test_full_body_maps_every_parameter() -> None:
    p = parse_body(
        body(
            model="m-big",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            max_completion_tokens=100,
            temperature=0,
            top_p=0.5,
            stop="END",
            seed=-3,
            n=1,
            stream=True,
            stream_options={"include_usage": True},
            conversation_id="c1",
            parent_request_id="r1",
            frequency_penalty=0.1,  # unknown-but-harmless fields are ignored
        ),
        SETTINGS,
    )
    assert [(m.role, m.content) for m in p.messages] == [
        ("system", "Be brief."),
        ("assistant", "ok"),
        ("user", "ab"),
    ]
    assert p.params.max_tokens == 100 and p.params.temperature == 0 and p.params.top_p == 0.5
    assert p.params.stop == ("END",) and p.params.seed == -3
    assert p.stream is True and p.include_usage
    assert (p.conversation_id, p.parent_request_id) == ("c1", "r1")


@pytest.mark.parametrize(
    ("raw", "param", "code"),
    [
        (b"{not json", None, "invalid_json"),
        (b"[]", None, "invalid_json"),
        (body(model="gpt-4"), "model", "model_not_found"),
        (body(messages=[]), "messages", "invalid_value"),
        (body(messages=[{"role": "tool", "content": "x"}]), "messages.0.role", "invalid_value"),
        (body(messages=[{"role": "user"}]), "messages.0.content", "invalid_request"),
        (body(messages=[{"role": "assistant", "content": "x"}]), "messages.0", "invalid_value"),
        (body(messages=[{"role": "user", "content": "   "}]), "messages.0", "invalid_value"),
        (
            body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
            "messages.0.content",
            "unsupported_content",
        ),
        (
            body(messages=[{"role": "user", "content": "x" * 100_001}]),
            "messages.0.content",
            "message_too_long",
        ),
        (body(max_tokens=0), "max_tokens", "invalid_value"),
        (body(max_tokens=101), "max_tokens", "invalid_value"),
        (body(max_completion_tokens=101, max_tokens=5), "max_completion_tokens", "invalid_value"),
        (body(temperature=2.1), "temperature", "invalid_value"),
        (body(temperature=-0.1), "temperature", "invalid_value"),
        (body(top_p=0), "top_p", "invalid_value"),
        (body(top_p=1.01), "top_p", "invalid_value"),
        (body(stop=["a", "b", "c", "d", "e"]), "stop", "invalid_value"),
        (body(stop=[""]), "stop", "invalid_value"),
        (body(stop=3), "stop", "invalid_value"),
        (body(seed="x"), "seed", "invalid_value"),
        (body(seed=2**63), "seed", "invalid_value"),
        (body(n=2), "n", "invalid_value"),
        (body(logprobs=True), "logprobs", "invalid_value"),
        (body(tools=[{"type": "function"}]), "tools", "unsupported_parameter"),
        (body(stream="yes"), "stream", "invalid_value"),
        (body(conversation_id=""), "conversation_id", "invalid_value"),
    ],
)
def test_bad_bodies_name_the_param(raw: bytes, param: str | None, code: str) -> None:
    err = refused(raw)
    assert (err.param, err.code, err.status) == (param, code, 400)


def test_limits_on_count_and_total_size() -> None:
    small = SETTINGS.model_copy(update={"max_messages": 2, "max_context_chars": 10})
    many = body(messages=[{"role": "user", "content": "a"}] * 3)
    with pytest.raises(BadRequest, match="At most 2"):
        parse_body(many, small)
    long = body(messages=[{"role": "user", "content": "x" * 11}])
    with pytest.raises(BadRequest) as info:
        parse_body(long, small)
    assert info.value.code == "context_too_long"


SURROGATE, NUL = "\ud800", "\x00"


@pytest.mark.parametrize("bad", [SURROGATE, NUL])
@pytest.mark.parametrize(
    ("over", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi{}"}]}, "messages.0.content"),
        (
            {"messages": [{"role": "system", "content": "be{}"}, {"role": "user", "content": "x"}]},
            "messages.0.content",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a{}"}]}]},
            "messages.0.content.0.text",
        ),
        ({"stop": "st{}"}, "stop"),
        ({"stop": ["ok", "st{}"]}, "stop.1"),
        ({"model": "m-small{}"}, "model"),
        ({"user": "u{}"}, "user"),
        ({"conversation_id": "conv-{}"}, "conversation_id"),
        ({"extra_field{}": 1}, "<key>"),
    ],
)
def test_a_lone_surrogate_or_nul_in_any_string_is_a_400_naming_the_field(
    over: dict[str, Any], param: str, bad: str
) -> None:
    escape = json.dumps(bad)[1:-1]  # the JSON escape a client sends: `\ud800`, `\u0000`
    raw = body(**json.loads(json.dumps(over).replace("{}", escape)))
    err = refused(raw)
    assert (err.status, err.param, err.code) == (400, param, "invalid_value")


def test_a_surrogate_pair_is_one_character_and_accepted() -> None:
    raw = b'{"model": "m-small", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    assert parse_body(raw, SETTINGS).messages[0].content == "\N{GRINNING FACE}"
