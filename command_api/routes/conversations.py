"""PATCH /v1/conversations/{id} (rename) and DELETE /v1/conversations/{id}."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Header
from pydantic import BaseModel, Field

from command_api.deps import Ctx, CurrentUser
from command_api.store import ConversationRow
from command_api.tracing import traceparent_for
from command_api.validation import check_text, path_id
from infra.http import BadRequest, NotFound
from schemas import ConversationDeleted, ConversationRenamed

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


class RenameBody(BaseModel):
    title: str = Field(min_length=1)


async def owned(ctx: Ctx, conversation_id: str, user: str) -> ConversationRow:
    conv = await ctx.store.conversation(
        path_id(conversation_id, "conversation_id", "conversation"), user
    )
    if conv is None:
        raise NotFound("No such conversation.", param="conversation_id")
    return conv


@router.patch("/{conversation_id}")
async def rename_conversation(
    conversation_id: str,
    body: RenameBody,
    ctx: Ctx,
    user: CurrentUser,
    traceparent: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Rename a conversation (ConversationRenamed)."""
    check_text(body.title, "title")  # what the projection could not store is refused here
    title = " ".join(body.title.split())
    if not title or len(title) > ctx.settings.max_title_chars:
        raise BadRequest(
            f"title must be 1-{ctx.settings.max_title_chars} characters.", param="title"
        )
    await owned(ctx, conversation_id, user)
    event = ConversationRenamed(
        conversation_id=conversation_id,
        user_id=user,
        title=title,
        traceparent=traceparent_for(traceparent),
    )
    await asyncio.shield(ctx.log.append(event))
    ctx.metrics.appended(event.event_type)
    return {"id": conversation_id, "object": "conversation", "title": title}


@router.delete("/{conversation_id}")
async def delete_conversation(
    conversation_id: str,
    ctx: Ctx,
    user: CurrentUser,
    traceparent: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Delete a conversation (ConversationDeleted); it answers 404 from then on."""
    await owned(ctx, conversation_id, user)
    event = ConversationDeleted(
        conversation_id=conversation_id, user_id=user, traceparent=traceparent_for(traceparent)
    )
    # Marked first so no prompt is admitted into it meanwhile; unmarked if Kafka refuses.
    await ctx.store.mark_deleted(conversation_id)
    try:
        await asyncio.shield(ctx.log.append(event))
    except BaseException:
        await asyncio.shield(ctx.store.mark_deleted(conversation_id, deleted=False))
        raise
    ctx.metrics.appended(event.event_type)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
