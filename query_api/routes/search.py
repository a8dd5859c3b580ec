"""Search the caller's messages (Meilisearch or Postgres full-text; same shape)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator

from infra.http import BadRequest, unstorable
from query_api.cursor import decode_offset, encode_offset
from query_api.deps import CurrentUser, State
from query_api.search import SearchHit

router = APIRouter(tags=["search"])


class SearchBody(BaseModel):
    query: str = Field(min_length=1, max_length=1000)
    limit: int = Field(default=20, ge=1, le=50)
    cursor: str | None = None

    @field_validator("query")
    @classmethod
    def _searchable(cls, v: str) -> str:
        # U+0000 or a lone surrogate would fail the backend's encoding (a 500 before)
        if unstorable(v):
            raise ValueError("query must not contain U+0000 or lone surrogates")
        return v


def _hit(hit: SearchHit) -> dict[str, Any]:
    cid = hit.conversation_id
    return {
        "object": "search.result",
        "message_id": hit.message_id,
        "conversation_id": cid,
        "request_id": hit.request_id,
        "role": hit.role,
        "title": hit.title,
        "snippet": hit.snippet,
        "created_at": hit.created_at.isoformat(),
        "links": {
            "conversation": f"/v1/conversations/{cid}",
            "messages": f"/v1/conversations/{cid}/messages",
        },
    }


async def _search(state: State, user: str, body: SearchBody) -> dict[str, Any]:
    offset = decode_offset(body.cursor)
    # one extra hit tells whether another page exists
    hits = await state.search.search(user, body.query, body.limit + 1, offset)
    more = len(hits) > body.limit
    return {
        "object": "list",
        "backend": state.search.name,
        "data": [_hit(h) for h in hits[: body.limit]],
        "has_more": more,
        "next_cursor": encode_offset(offset + body.limit) if more else None,
    }


@router.post("/v1/conversations/search")
async def search_post(state: State, user: CurrentUser, body: SearchBody) -> dict[str, Any]:
    """Search the caller's messages."""
    return await _search(state, user, body)


@router.get("/v1/search")
async def search_get(
    state: State,
    user: CurrentUser,
    q: Annotated[str, Query(min_length=1, max_length=1000)],
    limit: Annotated[int, Query(ge=1, le=50)] = 20,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Search the caller's messages (query-string form)."""
    if unstorable(q):
        raise BadRequest("q must not contain U+0000.", param="q", code="invalid_value")
    return await _search(state, user, SearchBody(query=q, limit=limit, cursor=cursor))
