"""A Responses body -> the chat body the prompt path accepts, errors named as Responses'."""

from __future__ import annotations

import json
from typing import Any

import pytest

from command_api.routes.responses import _messages, _param, _parse
from command_api.settings import CommandSettings
from command_api.validation import parse_body
from infra.http import BadRequest


def test_instructions_and_input_become_chat_messages() -> None:
    body = _parse(
        json.dumps(
            {
                "model": "m",
                "instructions": "Be brief.",
                "input": [
                    {"role": "developer", "content": "Rules."},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "a"},
                            {"type": "input_text", "text": "b"},
                        ],
                    },
                ],
            }
        ).encode()
    )
    assert _messages(body) == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    assert _messages(_parse(b'{"model": "m", "input": "hi"}')) == [
        {"role": "user", "content": "hi"}
    ]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "m", "input": "x", "store": False}, "store", "unsupported_value"),
        ({"model": "m", "input": "x", "tools": [{"type": "x"}]}, "tools", "unsupported_parameter"),
        ({"model": "m", "input": "x", "metadata": {"a": "b"}}, "metadata", "unsupported_parameter"),
        ({"model": "m", "input": 3}, "input", "invalid_value"),
        (
            {"model": "m", "input": "x", "previous_response_id": "r", "conversation": "c"},
            "conversation",
            "invalid_request",
        ),
    ],
)
def test_what_is_not_honoured_is_refused_by_name(
    body: dict[str, object], param: str, code: str
) -> None:
    with pytest.raises(BadRequest) as err:
        _parse(json.dumps(body).encode())
    assert (err.value.param, err.value.code) == (param, code)


def test_chat_validation_errors_name_the_responses_field() -> None:
    settings = CommandSettings()
    model = settings.model_ids[0]
    chat: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": "I"}, {"role": "user", "content": "  "}],
    }
    with pytest.raises(BadRequest) as err:
        parse_body(json.dumps(chat).encode(), settings)
    assert _param(err.value, instructions=True).param == "input.0"
    chat = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9}
    with pytest.raises(BadRequest) as err:
        parse_body(json.dumps(chat).encode(), settings)
    renamed = _param(err.value, instructions=False)
    assert renamed.param == "max_output_tokens" and "max_output_tokens" in renamed.message
