"""The conversation tree's writes: regenerate an answer, edit and resend a user message,
switch the current branch (issue #15).

A regenerate or an edit is a prompt like any other (PromptSubmitted v2, marked with
`branch` and `sibling_of`), admitted and appended by `PromptService`; it answers 202 with
the same body as an asynchronous chat completion, whose `stream_url` streams the answer.
A switch is a BranchSwitched naming the new leaf, so a replay reproduces it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from command_api.deps import Ctx, CurrentUser
from command_api.errors import ConversationBusy
from command_api.prompts import Branching
from command_api.routes.conversations import owned
from command_api.tracing import traceparent_for
from command_api.validation import check_text, parse_body, path_id
from infra.http import NotFound
from schemas import BranchSwitched

router = APIRouter(prefix="/v1/conversations", tags=["branches"])


class BranchBody(BaseModel):
    """Optional generation settings; by default the sibling's model and the defaults."""

    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None


class EditBody(BranchBody):
    content: str = Field(min_length=1)


class SwitchBody(BaseModel):
    request_id: str = Field(min_length=1)


async def _branch(
    ctx: Ctx,
    user: str,
    conversation_id: str,
    request_id: str,
    body: BranchBody,
    branching: Branching,
    traceparent: str | None,
    idempotency_key: str | None,
) -> JSONResponse:
    await owned(ctx, conversation_id, user)
    sibling = path_id(request_id, "request_id", "request")
    model = body.model
    if model is None:
        turn = await ctx.read_model.turn(conversation_id, sibling)
        model = turn.model if turn is not None else ctx.settings.model_ids[0]
    settings = body.model_dump(exclude={"model", "content"}, exclude_none=True)
    # The chat-completions validation, so a branch's settings are checked exactly alike;
    # its one message is a stand-in: the service composes the real context.
    raw = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": branching.content or "-"}],
            "conversation_id": conversation_id,
            **settings,
        }
    ).encode()
    prompt = parse_body(raw, ctx.settings)
    # What an Idempotency-Key's body hash covers: the settings and which branch of what.
    keyed = json.dumps({**json.loads(raw), "branch": branching.branch, "of": sibling}).encode()
    accepted = await ctx.prompts.submit(
        user_id=user,
        prompt=prompt,
        raw=keyed,
        idempotency_key=idempotency_key,
        traceparent=traceparent_for(traceparent),
        branching=branching,
    )
    body_out = {**accepted.body(), "branch": branching.branch, "sibling_of": sibling}
    headers = {**accepted.rate_headers, "x-request-id": accepted.request_id}
    if accepted.replayed:
        headers["idempotent-replayed"] = "true"
    return JSONResponse(body_out, status_code=202, headers=headers)


@router.post("/{conversation_id}/messages/{request_id}/regenerate", status_code=202)
async def regenerate(
    conversation_id: str,
    request_id: str,
    ctx: Ctx,
    user: CurrentUser,
    body: BranchBody | None = None,
    traceparent: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Another answer to the user message of `request_id` (a sibling; the others stay)."""
    branching = Branching("regenerate", request_id)
    return await _branch(
        ctx, user, conversation_id, request_id, body or BranchBody(), branching, traceparent,
        idempotency_key,
    )  # fmt: skip


@router.post("/{conversation_id}/messages/{request_id}/edit", status_code=202)
async def edit(
    conversation_id: str,
    request_id: str,
    body: EditBody,
    ctx: Ctx,
    user: CurrentUser,
    traceparent: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """`content` as a new user message beside the one of `request_id`: a new branch."""
    check_text(body.content, "content")
    branching = Branching("edit", request_id, body.content)
    return await _branch(
        ctx, user, conversation_id, request_id, body, branching, traceparent, idempotency_key
    )


@router.post("/{conversation_id}/branch")
async def switch_branch(
    conversation_id: str,
    body: SwitchBody,
    ctx: Ctx,
    user: CurrentUser,
    traceparent: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Make the branch through `request_id` current (its newest leaf): BranchSwitched.

    Answers once the read model shows it (bounded wait), so the next read or continuation
    of this client follows the new branch."""
    await owned(ctx, conversation_id, user)
    check_text(body.request_id, "request_id")
    mine = await ctx.store.request(body.request_id, user)
    if mine is None or mine.conversation_id != conversation_id:
        raise NotFound("No such request in this conversation.", param="request_id")
    leaf = await ctx.read_model.newest_leaf_under(conversation_id, body.request_id)
    if leaf is None:
        raise ConversationBusy(
            "That request is not in the conversation's history yet; retry shortly.",
            param="request_id",
            headers={"Retry-After": "1"},
        )
    event = BranchSwitched(
        conversation_id=conversation_id,
        user_id=user,
        request_id=leaf,
        traceparent=traceparent_for(traceparent),
    )
    await asyncio.shield(ctx.log.append(event))
    ctx.metrics.appended(event.event_type)
    await _wait_leaf(ctx, conversation_id, leaf, ctx.settings.continuation_wait_s)
    return {
        "object": "conversation.branch",
        "conversation_id": conversation_id,
        "current_request_id": leaf,
    }


async def _wait_leaf(ctx: Ctx, conversation_id: str, leaf: str, timeout_s: float) -> None:
    """Poll (10 ms doubling to 200 ms) until the read model's current leaf is `leaf`."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + timeout_s, 0.01
    while (await ctx.read_model.leaf(conversation_id))[0] != leaf and loop.time() < deadline:
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, 0.2)
