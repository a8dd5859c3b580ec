"""The read side of OpenAI's Responses API: a response is one of the caller's completions.

`GET /v1/responses/{id}` is the completion's state as a Response object; with
`stream=true` it is the Responses event stream, replayed from the request's start (the
log holds it: chunks within chat.completions' retention, the text in Postgres after) and
cut after `starting_after`; `GET /v1/responses/{id}/input_items` is what that turn sent.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request, Response
from psycopg.rows import dict_row

from query_api.deps import AppState, CurrentUser, State
from query_api.frame_writer import FrameWriter
from query_api.responses_format import FrameParser, ResponseStream, created_at, response_object, sse
from query_api.routes.completions import completion_view, require_owner
from query_api.routes.owner import to_owner
from query_api.sse_response import SseResponse
from query_api.stream import StreamSession

router = APIRouter(prefix="/v1/responses", tags=["responses"])
# A turn's own messages: its user message, and for a conversation's first turn the
# context it brought (`<request_id>:ctx<i>`, processors.fold).
INPUT_SQL = (
    "SELECT id, role, content FROM chatlog.messages WHERE request_id = %s"
    " AND role <> 'assistant' ORDER BY created_at, id"
)


@router.get("/{response_id}", response_model=None)
async def get_response(
    state: State,
    user: CurrentUser,
    request: Request,
    response_id: str,
    stream: bool = False,
    starting_after: int | None = None,
) -> dict[str, Any] | SseResponse | Response:
    """The Response object, or (`stream=true`) its event stream after `starting_after`."""
    await require_owner(state, user, response_id)  # waits briefly for a just-accepted one
    elsewhere = await to_owner(state, request, response_id, adopt=stream)
    if elsewhere is not None:
        return elsewhere
    view = await completion_view(state, user, response_id)
    created = _created(state, view)
    if not stream:
        return {**response_object(view), "created_at": created}
    mapper = ResponseStream(response_id, view["model"], created, view["conversation_id"])
    after = -1 if starting_after is None else starting_after
    session = StreamSession(
        state.settings, state.hub, state.durable, state.metrics, response_id, None
    )

    async def frames(_: FrameWriter) -> AsyncGenerator[bytes, None]:
        # the hub's direct writes are not used: every frame is translated here
        parser = FrameParser()
        out = [e for e in mapper.start() if e["sequence_number"] > after]
        if out:
            yield b"".join(sse(e) for e in out)
        async for data in session.events():
            for event, payload in parser.feed(data):
                events, over = mapper.on(event, payload)
                kept = [e for e in events if e["sequence_number"] > after]
                if kept:
                    yield b"".join(sse(e) for e in kept)
                if over:
                    return

    return SseResponse(frames, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _created(state: AppState, view: dict[str, Any]) -> int:
    """The same creation time however early it is read (the projection may lag)."""
    owner = state.hub.owner(view["id"])
    return created_at(view) or (int(owner.created_at) if owner else 0)


@router.get("/{response_id}/input_items")
async def input_items(
    state: State, user: CurrentUser, response_id: str, order: str = "desc"
) -> dict[str, Any]:
    """The messages this turn sent (not the history it continued), as input items."""
    await require_owner(state, user, response_id)
    view = await completion_view(state, user, response_id)
    return {"object": "list", **await _items(state, view["id"], order == "asc")}


async def _items(state: AppState, request_id: str, ascending: bool) -> dict[str, Any]:
    async with state.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(INPUT_SQL, (request_id,))
        rows = await cur.fetchall()
    items = [
        {
            "id": f"msg_{row['id']}",
            "type": "message",
            "role": row["role"],
            "status": "completed",
            "content": [{"type": "input_text", "text": row["content"]}],
        }
        for row in rows
    ]
    if not ascending:
        items.reverse()
    return {
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }
