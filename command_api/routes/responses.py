"""The write side of OpenAI's Responses API, through the same prompt path as chat.

`POST /v1/responses` becomes a chat-completions body and is accepted by `PromptService`
exactly as `POST /v1/chat/completions` is: one PromptSubmitted, whose request id is the
response id. With `Prefer: respond-async` the Response is answered at once (queued), as
with `background`. `previous_response_id` continues that response's conversation after it
(`parent_request_id` = that request); `conversation` continues a conversation at its last
turn. The Response object and its event stream are the query API's
(`query_api/routes/responses.py`), read over HTTP with the caller's own key: this service
builds no second view of a completion.

`DELETE /v1/responses/{id}` deletes the conversation the response belongs to (a chain of
responses is one conversation; ConversationDeleted is the log's only deletion).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from command_api.deps import Context, Ctx, CurrentUser, current_user, get_context
from command_api.errors import GatewayTimeout, UpstreamUnavailable
from command_api.routes.completions import cancel_chat_completion, read_body, wants_async
from command_api.routes.conversations import delete_conversation
from command_api.tracing import traceparent_for
from command_api.validation import parse_body, parse_model, path_id
from infra.http import BadRequest, NotFound

router = APIRouter(prefix="/v1/responses", tags=["responses"])
Str = Annotated[str | None, Header()]
UNSUPPORTED = ("tools", "tool_choice", "reasoning", "prompt", "include", "text", "truncation")
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = ("input_text", "output_text", "text")


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "message"
    role: str
    content: str | list[_Part]


class ResponsesBody(BaseModel):
    """The subset of OpenAI's Responses body we honour."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    input: str | list[_Item]
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=200)
    conversation: str | dict[str, str] | None = None
    stream: bool | None = None
    background: bool | None = None
    store: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    metadata: dict[str, str] | None = None
    user: str | None = None


def _parse(raw: bytes) -> ResponsesBody:
    body = parse_model(raw, ResponsesBody, UNSUPPORTED)
    if body.store is False:
        raise BadRequest(
            "Every response is stored (it is an event in the log): `store: false` is not "
            "supported.",
            param="store",
            code="unsupported_value",
        )
    if body.metadata:
        raise BadRequest(
            "`metadata` is not stored.", param="metadata", code="unsupported_parameter"
        )
    if body.previous_response_id is not None and body.conversation is not None:
        raise BadRequest(
            "Give previous_response_id or conversation, not both.", param="conversation"
        )
    return body


def _messages(body: ResponsesBody) -> list[dict[str, Any]]:
    """`instructions` + `input` as chat messages (validation.py checks them)."""
    out: list[dict[str, Any]] = []
    if body.instructions:
        out.append({"role": "system", "content": body.instructions})
    items = [_Item(role="user", content=body.input)] if isinstance(body.input, str) else body.input
    for i, item in enumerate(items):
        if item.type != "message":
            raise BadRequest(
                f"Input items of type `{item.type}` are not supported.",
                param=f"input.{i}.type",
                code="unsupported_parameter",
            )
        content: Any = item.content
        if isinstance(content, list):
            content = [
                {"type": "text", "text": p.text} if p.type in TEXT_PARTS else {"type": p.type}
                for p in content
            ]
        out.append({"role": ROLES.get(item.role, item.role), "content": content})
    return out


def _param(exc: BadRequest, instructions: bool) -> BadRequest:
    """A chat-body param (`messages.3.content`, `max_tokens`) named as the Responses one."""
    param = exc.param or ""
    if param.startswith("messages."):
        head, _, rest = param.removeprefix("messages.").partition(".")
        if head.isdigit():
            param = ".".join(filter(None, (f"input.{int(head) - int(instructions)}", rest)))
    elif param in ("max_tokens", "messages"):
        param = {"max_tokens": "max_output_tokens", "messages": "input"}[param]
    else:
        return exc
    return BadRequest(exc.message.replace(exc.param or "", param), param=param, code=exc.code)


async def _conversation(
    ctx: Context, body: ResponsesBody, user: str
) -> tuple[str | None, str | None]:
    """(conversation id, parent request id) the new turn continues."""
    if body.previous_response_id is not None:
        prev = path_id(body.previous_response_id, "previous_response_id", "response")
        req = await ctx.store.request(prev, user)
        if req is None:
            raise NotFound("No such response.", param="previous_response_id")
        return req.conversation_id, prev
    conv = body.conversation
    conv_id = conv.get("id") if isinstance(conv, dict) else conv
    if isinstance(conv, dict) and conv_id is None:
        raise BadRequest("conversation needs an `id`.", param="conversation")
    return conv_id, None


@router.post("", response_model=None)
async def create_response(request: Request) -> JSONResponse | StreamingResponse:
    """Accept a turn; answer its Response (queued for `background`), or stream its events."""
    ctx = await get_context(request)
    authorization = request.headers.get("authorization") or ""
    user = await current_user(ctx, authorization)
    body = _parse(await read_body(request, ctx.settings.max_body_bytes))
    conversation_id, parent = await _conversation(ctx, body, user)
    chat = {
        "model": body.model,
        "messages": _messages(body),
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "conversation_id": conversation_id,
        "parent_request_id": parent,
    }
    raw = json.dumps({k: v for k, v in chat.items() if v is not None}).encode()
    try:
        prompt = parse_body(raw, ctx.settings)
    except BadRequest as exc:
        raise _param(exc, bool(body.instructions)) from exc
    accepted = await ctx.prompts.submit(
        user_id=user,
        prompt=prompt,
        raw=raw,
        idempotency_key=request.headers.get("idempotency-key"),
        traceparent=traceparent_for(request.headers.get("traceparent")),
    )
    headers = {**accepted.rate_headers, "x-request-id": accepted.request_id}
    rid = accepted.request_id
    prefer_async = wants_async(request.headers.get("prefer"))  # the chat endpoint's rule
    if body.stream and not prefer_async:
        return StreamingResponse(
            _relay(ctx, rid, authorization),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    if not (body.background or prefer_async):
        await _wait(ctx, rid, authorization)
    obj = await _fetch(ctx, rid, authorization)
    obj.update(
        background=bool(body.background),
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        previous_response_id=body.previous_response_id,
        temperature=body.temperature,
        top_p=body.top_p,
    )
    return JSONResponse(obj, headers=headers)


async def _wait(ctx: Context, rid: str, authorization: str) -> None:
    """Until the generation is over (done or error): the Response then says which."""
    try:
        async with asyncio.timeout(ctx.settings.completion_wait_timeout_s):
            async for ev in ctx.streams.events(rid, authorization):
                if ev.event in ("done", "error"):
                    return
    except TimeoutError as exc:
        raise GatewayTimeout(
            f"{rid} did not finish in time; it goes on: retrieve it later.",
        ) from exc


async def _fetch(ctx: Context, rid: str, authorization: str) -> dict[str, Any]:
    """The Response object as the query API builds it."""
    try:
        resp = await ctx.streams.http.get(
            f"/v1/responses/{rid}", headers={"Authorization": authorization}
        )
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(
            f"{rid} was accepted but could not be read; retrieve it."
        ) from exc
    if resp.status_code != 200:
        raise UpstreamUnavailable(f"{rid} was accepted but could not be read; retrieve it.")
    obj: dict[str, Any] = resp.json()
    return obj


async def _relay(ctx: Context, rid: str, authorization: str) -> AsyncIterator[bytes]:
    """The query API's Responses stream, byte for byte; a failure to read it ends the
    stream with an `error` event (the generation goes on: retrieve it with stream=true)."""
    try:
        async with ctx.streams.http.stream(
            "GET",
            f"/v1/responses/{rid}",
            params={"stream": "true"},
            headers={"Authorization": authorization, "Accept": "text/event-stream"},
        ) as resp:
            if resp.status_code == 200:
                async for data in resp.aiter_raw():
                    yield data
                return
    except httpx.TransportError:
        pass
    message = f"The stream of {rid} could not be read; the generation goes on: retrieve it."
    error = {"type": "error", "code": "stream_failed", "message": message, "param": None}
    yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()


@router.post("/{response_id}/cancel")
async def cancel_response(
    response_id: str, request: Request, ctx: Ctx, user: CurrentUser, traceparent: Str = None
) -> JSONResponse:
    """Ask the generation to stop (CancelRequested); answers the Response as it is now."""
    await cancel_chat_completion(response_id, ctx, user, traceparent)
    obj = await _fetch(ctx, response_id, request.headers.get("authorization") or "")
    return JSONResponse(obj)


@router.delete("/{response_id}")
async def delete_response(
    response_id: str, ctx: Ctx, user: CurrentUser, traceparent: Str = None
) -> dict[str, Any]:
    """Delete the response with its conversation (see the module docstring)."""
    req = await ctx.store.request(path_id(response_id, "response_id", "response"), user)
    if req is None:
        raise NotFound("No such response.", param="response_id")
    await delete_conversation(req.conversation_id, ctx, user, traceparent)
    return {"id": response_id, "object": "response", "deleted": True}
