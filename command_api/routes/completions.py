"""POST /v1/chat/completions (accept a prompt; 202, OpenAI stream or object) and its cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from command_api.deps import Context, Ctx, CurrentUser, current_user, get_context
from command_api.errors import GatewayTimeout, UpstreamUnavailable
from command_api.openai_format import ChunkStream, CompletionError, collect
from command_api.prompts import Accepted
from command_api.tracing import traceparent_for
from command_api.validation import parse_body, path_id
from infra.auth import hash_key, is_session
from infra.http import ApiError, NotFound, PayloadTooLarge, Unauthorized, bearer_key
from schemas import CancelRequested

router = APIRouter(prefix="/v1/chat/completions", tags=["completions"])
Str = Annotated[str | None, Header()]


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything over `limit` bytes without reading it all."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body over {limit} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body over {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def wants_async(prefer: str | None) -> bool:
    return any(p.strip().lower() == "respond-async" for p in (prefer or "").split(","))


@router.post("")
async def create_chat_completion(request: Request) -> Response:
    """Accept a prompt: 202 (async), the OpenAI SSE stream, or the finished chat.completion."""
    # The hot path resolves context, user and headers by hand: FastAPI's per-request
    # dependency solving (and its deep copies of defaults) was a visible share of its CPU.
    ctx = await get_context(request)
    authorization = request.headers.get("authorization")
    key = bearer_key(authorization)
    # An uncached key is resolved by admission itself (one round trip for both), except
    # where the user is needed earlier (idempotency claim, continuation ownership).
    user = ctx.auth_cache.get(key)
    idempotency_key = request.headers.get("idempotency-key")
    prefer = request.headers.get("prefer")
    traceparent = request.headers.get("traceparent")
    try:
        raw = await read_body(request, ctx.settings.max_body_bytes)
        prompt = parse_body(raw, ctx.settings)
        # Admission resolves API keys only: a session (the gateway's cookie) is resolved here.
        early = idempotency_key is not None or prompt.conversation_id is not None
        # (the token quota, checked by the prompt service, needs the user too)
        if user is None and (early or is_session(key) or ctx.settings.token_quota_per_day > 0):
            user = await current_user(ctx, authorization)
        accepted = await ctx.prompts.submit(
            user_id=user,
            key_hash="" if user is not None else hash_key(key),
            prompt=prompt,
            raw=raw,
            idempotency_key=idempotency_key,
            traceparent=traceparent_for(traceparent),
        )
    except ApiError as exc:
        if user is None and not isinstance(exc, Unauthorized):
            await current_user(ctx, authorization)  # a bad key is a 401 before anything else
        raise
    if user is None and accepted.user_id is not None:
        ctx.auth_cache.put(key, accepted.user_id)
    headers = {**accepted.rate_headers, "x-request-id": accepted.request_id}
    if accepted.replayed:
        headers["idempotent-replayed"] = "true"
    mode = "stream" if prompt.stream else ("wait" if prompt.stream is False else None)
    if wants_async(prefer) or (mode or ctx.settings.default_response) == "async":
        return JSONResponse(accepted.body(), status_code=202, headers=headers)
    if mode == "stream":
        mapper = ChunkStream(
            accepted.request_id, accepted.model, accepted.stream_url, prompt.include_usage
        )
        return StreamingResponse(
            relay(ctx, accepted, mapper, authorization or ""),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        async with asyncio.timeout(ctx.settings.completion_wait_timeout_s):
            body = await collect(
                ctx.streams.events(accepted.request_id, authorization or ""),
                request_id=accepted.request_id,
                model=accepted.model,
                conversation_id=accepted.conversation_id,
            )
    except CompletionError as exc:  # the generation itself failed
        ctx.availability.record(accepted.model, exc.code or "completion_failed")
        exc.headers.update(headers)
        raise
    except UpstreamUnavailable as exc:
        # The prompt WAS accepted: say so, or a client would retry and generate twice.
        raise UpstreamUnavailable(
            f"{accepted.request_id} was accepted but its result could not be read "
            f"({exc.message}); read it from {accepted.stream_url}.",
            headers=headers,
        ) from exc
    except TimeoutError as exc:
        raise GatewayTimeout(
            f"{accepted.request_id} did not finish in time; it goes on: read it from "
            f"{accepted.stream_url}.",
            headers=headers,
        ) from exc
    ctx.availability.record(accepted.model, None)
    return JSONResponse(body, headers=headers)


async def relay(
    ctx: Context, accepted: Accepted, mapper: ChunkStream, authorization: str
) -> AsyncIterator[str]:
    """The OpenAI stream. A client that goes away only stops this relay: the generation
    goes on (cancel is explicit), and its text stays readable from the stream URL."""
    yield mapper.first()
    try:
        async for event in ctx.streams.events(accepted.request_id, authorization):
            frames, over = mapper.on_event(event)
            if over:
                code = (
                    (event.data.get("error") or {}).get("code") if event.event == "error" else None
                )
                ctx.availability.record(
                    accepted.model, code or (None if event.event == "done" else "error")
                )
            for frame in frames:
                yield frame
            if over:
                return
    except ApiError as exc:
        yield mapper.failure(exc)


def _state(request_id: str, conversation_id: str, status: str, cancel: bool) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.request",
        "conversation_id": conversation_id,
        "status": status,
        "cancel_requested": cancel,
    }


@router.post("/{request_id}/cancel")
async def cancel_chat_completion(
    request_id: str, ctx: Ctx, user: CurrentUser, traceparent: Str = None
) -> JSONResponse:
    """Ask for a generation to stop: 202 when asked now, 200 with the state when already
    asked or already over."""
    req = await ctx.store.request(path_id(request_id, "request_id", "request"), user)
    if req is None:
        raise NotFound("No such request.", param="request_id")
    state = await ctx.read_model.completion(request_id)
    if state.terminal or not await ctx.store.mark_cancel_requested(request_id):
        body = _state(request_id, req.conversation_id, state.status, req.cancel_requested)
        return JSONResponse(body, status_code=200)
    event = CancelRequested(
        request_id=request_id,
        conversation_id=req.conversation_id,
        user_id=user,
        traceparent=traceparent_for(traceparent),
    )
    try:
        await asyncio.shield(ctx.log.append(event))
    except BaseException:
        await asyncio.shield(ctx.store.unmark_cancel_requested(request_id))
        raise
    ctx.metrics.appended(event.event_type)
    return JSONResponse(
        _state(request_id, req.conversation_id, state.status, True), status_code=202
    )
