"""A completion's state, and its resumable live stream (SSE)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from infra.http import BadRequest, NotFound, unstorable
from query_api import views
from query_api.deps import AppState, CurrentUser, State
from query_api.events import Position
from query_api.hub_fold import status_of
from query_api.routes.owner import to_owner
from query_api.sse_response import SseResponse
from query_api.stream import StreamSession

router = APIRouter(prefix="/v1/chat/completions", tags=["completions"])
OWNER_POLL_S = 0.25  # how often an unknown request's owner is re-read from Postgres
DELETED = ""  # the owner of a deleted conversation's request: no user has this id


async def require_owner(state: AppState, user: str, request_id: str) -> None:
    """404 unless `user` owns the request.

    The owner comes from the hub (it tails PromptSubmitted, so it knows a request
    milliseconds after the POST) or from `chatlog.completions` once projected; a request
    neither knows yet is waited for briefly, since a client opens its stream right after
    the POST that created it.
    """
    if unstorable(request_id):  # no request has such an id: answer now, not after the wait
        raise NotFound(f"No completion {request_id!r}.", param="request_id")
    deadline = time.monotonic() + state.settings.owner_wait_s
    owner = state.hub.owner(request_id)
    while True:
        owner_id = owner.user_id if owner else None
        if owner_id is None:
            async with state.pool.connection() as conn:
                row = await views.completion(conn, request_id)
            if row is not None:
                # the hub forgets a deleted conversation's requests at once; Postgres may
                # lag: a deleted one is nobody's (and is not waited for)
                deleted = state.hub.conversation_deleted(row["conversation_id"])
                owner_id = DELETED if deleted else row["user_id"]
        if owner_id == user:
            return
        remaining = deadline - time.monotonic()
        if owner_id is not None or remaining <= 0:
            raise NotFound(f"No completion {request_id!r}.", param="request_id")
        # woken the moment the hub reads the PromptSubmitted; Postgres re-checked between
        # (a request older than the hub reaches only Postgres)
        owner = await state.hub.wait_owner(request_id, min(remaining, OWNER_POLL_S))


@router.get("/{request_id}", response_model=None)
async def get_completion(
    state: State, user: CurrentUser, request: Request, request_id: str
) -> dict[str, Any] | Response:
    """Status, text so far, usage and timings of one of the caller's completions (from
    the process whose hub reads it: the freshest view)."""
    elsewhere = await to_owner(state, request, request_id, adopt=False)
    if elsewhere is not None:
        return elsewhere
    return await completion_view(state, user, request_id)


async def completion_view(state: AppState, user: str, request_id: str) -> dict[str, Any]:
    """Status, text so far, usage and timings of one of the caller's completions."""
    async with state.pool.connection() as conn:
        row = await views.completion(conn, request_id)
    # the hub read its ConversationDeleted: gone, whatever the projection still holds
    deleted = row is not None and state.hub.conversation_deleted(row["conversation_id"])
    if deleted or row is None or row["user_id"] != user:
        owner = state.hub.owner(request_id)
        if row is not None or owner is None or owner.user_id != user:
            raise NotFound(f"No completion {request_id!r}.", param="request_id")
        # submitted, not yet projected
        row = {
            "request_id": request_id,
            "conversation_id": owner.conversation_id,
            "status": "queued",
            "model": owner.model,
            "attempt": 0,
        }
    row = {**row, **await _live(state, request_id, row)}
    return {
        "id": request_id,
        "object": "chat.completion.status",
        "conversation_id": row["conversation_id"],
        "status": row["status"],
        "model": row["model"],
        "attempt": row["attempt"],
        "text": row.get("content") or "",
        "finish_reason": row.get("finish_reason"),
        "usage": row.get("usage"),
        "error": row.get("error"),
        "timings": {
            "created_at": _iso(row.get("created_at")),
            "updated_at": _iso(row.get("updated_at")),
            "finished_at": _iso(row.get("finished_at")),
            "ttft_ms": row.get("ttft_ms"),
        },
        "stream_url": f"/v1/chat/completions/{request_id}/stream",
    }


async def _live(state: AppState, request_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """What the hub knows beyond the projection (nothing: {}).

    The hub's fold is newer than Postgres while the projection lags: a client whose stream
    just said `done` must not read `streaming` here with the last chunk missing. The hub
    holds the highest attempt from where it joined; when it did not see the attempt
    begin, Postgres' chunks of it come first (as they do in a stream's catch-up).
    """
    snap = state.hub.snapshot(request_id)
    if snap is None or not snap.events or snap.events[0].attempt < row["attempt"]:
        return {}
    attempt = snap.events[0].attempt
    hub_chunks = [e for e in snap.events if e.kind == "chunk"]
    chunks = hub_chunks
    if not snap.anchored:
        _, pg_events = await state.durable.state(request_id)
        pg_chunks = [e for e in pg_events if e.kind == "chunk" and e.attempt == attempt]
        first = hub_chunks[0].seq if hub_chunks else None
        if first is not None and len(pg_chunks) < first:
            return {}  # neither source has the whole text yet: the projection's view stands
        chunks = pg_chunks[:first] + hub_chunks if first is not None else pg_chunks
    view = status_of(snap)
    if view["status"] == "streaming" and row["status"] in views.TERMINAL:
        return {}  # only the hub's buffer is not at the end yet
    view["content"] = "".join(c.text for c in chunks)
    end = snap.events[-1]
    if end.kind in ("done", "error") and end.occurred_at and not row.get("finished_at"):
        view["finished_at"] = datetime.fromtimestamp(end.occurred_at, UTC)
    model = state.hub.model_of(request_id)
    if model:
        view["model"] = model
    return view


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


@router.get("/{request_id}/stream", response_model=None)
async def stream_completion(
    state: State,
    user: CurrentUser,
    request: Request,
    request_id: str,
    starting_after: str | None = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> SseResponse | Response:
    """SSE: chunk/reset/done/error events; resumes after `Last-Event-ID`/`starting_after`."""
    try:
        resume = Position.parse(last_event_id or starting_after)
    except ValueError as exc:
        raise BadRequest(
            "Event ids look like `<attempt>:<seq>` or `<attempt>:done`.",
            param="starting_after",
            code="invalid_event_id",
        ) from exc
    await require_owner(state, user, request_id)
    elsewhere = await to_owner(state, request, request_id, adopt=True)
    if elsewhere is not None:
        return elsewhere
    session = StreamSession(
        state.settings, state.hub, state.durable, state.metrics, request_id, resume
    )
    return SseResponse(
        session.events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
