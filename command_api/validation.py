"""OpenAI chat-completions body -> a validated `PromptRequest` (or a 400 naming the param).

Parsing is done by hand from raw bytes (not as a FastAPI body parameter) so the endpoint
controls the size limit (413) and can hash the exact body for idempotency.

What the API accepts, every projection must store: JSON can carry two things that no event
(Avro's UTF-8), Postgres text or Meilisearch can hold, a lone surrogate (`"\\ud800"`) and
U+0000. Both are refused at the door, in any string of the body (keys included), with a
400 naming the field; everything else is stored as sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from command_api.settings import CommandSettings
from infra.http import BadRequest, NotFound
from infra.http import unstorable as _unstorable
from schemas import ChatMessage, GenerationParams

ROLES = ("system", "user", "assistant")
# Fields whose semantics we do not implement: accepting them silently would lie to clients.
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "audio", "prediction")


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[_ContentPart] | None = None
    name: str | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


_Body = TypeVar("_Body", bound=BaseModel)


class ChatCompletionBody(BaseModel):
    """The subset of OpenAI's body we honour; unknown harmless fields are ignored."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    messages: list[_Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    n: int | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)
    logprobs: bool | None = None
    conversation_id: str | None = Field(default=None, min_length=1, max_length=200)
    parent_request_id: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s or len(s) > 200 for s in stops):
            raise ValueError("stop sequences must be 1-200 characters")
        return v


@dataclass(frozen=True)
class PromptRequest:
    """A validated prompt: what the rest of the command API works with."""

    model: str
    messages: tuple[ChatMessage, ...]
    params: GenerationParams
    stream: bool | None
    include_usage: bool
    conversation_id: str | None
    parent_request_id: str | None


def parse_body(raw: bytes, settings: CommandSettings) -> PromptRequest:
    """Validate an OpenAI chat-completions body; raises BadRequest naming the bad param."""
    return _check(parse_model(raw, ChatCompletionBody, UNSUPPORTED), settings)


def parse_model(raw: bytes, model: type[_Body], unsupported: Iterable[str]) -> _Body:
    """A JSON object body validated into `model` (chat completions, responses): BadRequest
    naming the bad param for invalid JSON, unstorable text, an unsupported or invalid field."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"Body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("Body must be a JSON object.", code="invalid_json")
    refuse_unstorable(data, ())
    for name in unsupported:
        if data.get(name) not in (None, [], {}):
            raise BadRequest(
                f"`{name}` is not supported.", param=name, code="unsupported_parameter"
            )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not _union_tag(p)) or None
        raise BadRequest(f"{param}: {first['msg']}", param=param, code="invalid_value") from exc


def unstorable(text: str) -> str | None:
    """Why `text` cannot be stored (a lone surrogate, U+0000), or None when it can."""
    if not _unstorable(text):
        return None
    return "contains U+0000 (NUL)" if "\x00" in text else "contains a lone surrogate (not valid Unicode)"


def check_text(text: str, param: str) -> None:
    """BadRequest naming `param` unless `text` can be stored (see `unstorable`)."""
    reason = unstorable(text)
    if reason is not None:
        raise BadRequest(f"{param} {reason}.", param=param, code="invalid_value")


def path_id(value: str, param: str, what: str) -> str:
    """A path id as given, or 404 for one no id can be (U+0000, a lone surrogate): such a
    value would only fail in the database driver (a 500) on its way to the same answer."""
    if unstorable(value) is not None:
        raise NotFound(f"No such {what}.", param=param)
    return value


def refuse_unstorable(value: Any, path: tuple[str | int, ...]) -> None:
    """Walk a parsed JSON value; BadRequest naming the first unstorable string's path."""
    if isinstance(value, str):
        check_text(value, ".".join(map(str, path)) or "body")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, ".".join(map(str, (*path, "<key>"))))  # where a bad key sits
            refuse_unstorable(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            refuse_unstorable(v, (*path, i))


def _union_tag(part: str | int) -> bool:
    """Pydantic names the member of a union that failed (`str`, `list[str]`): not a param."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))


def _check(body: ChatCompletionBody, settings: CommandSettings) -> PromptRequest:
    if body.model not in settings.model_ids:
        raise BadRequest(
            f"The model `{body.model}` does not exist; served: {', '.join(settings.model_ids)}.",
            param="model",
            code="model_not_found",
        )
    if body.n not in (None, 1):
        raise BadRequest("Only n=1 is supported.", param="n", code="invalid_value")
    if body.logprobs:
        raise BadRequest("logprobs are not supported.", param="logprobs", code="invalid_value")
    messages = _messages(body.messages, settings)
    return PromptRequest(
        model=body.model,
        messages=messages,
        params=GenerationParams(
            max_tokens=_max_tokens(body, settings),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
            seed=body.seed,
        ),
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        conversation_id=body.conversation_id,
        parent_request_id=body.parent_request_id,
    )


def _messages(raw: list[_Message], settings: CommandSettings) -> tuple[ChatMessage, ...]:
    if not raw:
        raise BadRequest("messages must not be empty.", param="messages", code="invalid_value")
    if len(raw) > settings.max_messages:
        raise BadRequest(
            f"At most {settings.max_messages} messages.", param="messages", code="invalid_value"
        )
    out: list[ChatMessage] = []
    total = 0
    for i, m in enumerate(raw):
        param = f"messages.{i}"
        if m.role not in ROLES:
            raise BadRequest(
                f"Unsupported role `{m.role}`: use one of {', '.join(ROLES)}.",
                param=f"{param}.role",
                code="invalid_value",
            )
        text = _text(m.content, param)
        if len(text) > settings.max_message_chars:
            raise BadRequest(
                f"Message over {settings.max_message_chars} characters.",
                param=f"{param}.content",
                code="message_too_long",
            )
        total += len(text)
        out.append(ChatMessage(role=m.role, content=text))
    if total > settings.max_context_chars:
        raise BadRequest(
            f"Messages over {settings.max_context_chars} characters in total.",
            param="messages",
            code="context_too_long",
        )
    if out[-1].role != "user" or not out[-1].content.strip():
        raise BadRequest(
            "The last message must be a non-empty user message.",
            param=f"messages.{len(out) - 1}",
            code="invalid_value",
        )
    return tuple(out)


def _text(content: str | list[_ContentPart] | None, param: str) -> str:
    if content is None:
        raise BadRequest("Message content is required.", param=f"{param}.content")
    if isinstance(content, str):
        return content
    if any(p.type != "text" or p.text is None for p in content):
        raise BadRequest(
            "Only text content parts are supported.",
            param=f"{param}.content",
            code="unsupported_content",
        )
    return "".join(p.text or "" for p in content)


def _max_tokens(body: ChatCompletionBody, settings: CommandSettings) -> int:
    name: Literal["max_completion_tokens", "max_tokens"] = (
        "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    )
    value: Any = getattr(body, name)
    if value is None:
        return min(settings.default_max_tokens, settings.max_tokens_limit)
    if not 1 <= value <= settings.max_tokens_limit:
        raise BadRequest(
            f"{name} must be between 1 and {settings.max_tokens_limit}.",
            param=name,
            code="invalid_value",
        )
    return int(value)
