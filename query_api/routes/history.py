"""Conversation history: cursor-paginated, newest first, only the caller's own.

A conversation is a tree (issue #15): `/messages` is its current branch, root to the
current leaf, each message with its siblings (the other answers to the same user message,
or the other user messages after the same answer); `/tree` is every branch.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from infra.http import NotFound
from query_api import views
from query_api.cursor import decode_keyset, encode_keyset
from query_api.deps import CurrentUser, State

router = APIRouter(prefix="/v1/conversations", tags=["history"])

Limit = Annotated[int, Query(ge=1, le=100)]


def _conversation(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "conversation",
        "title": row["title"],
        "status": row["status"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "last_request_id": row["last_request_id"],
    }


def _message(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "conversation.message",
        "conversation_id": row["conversation_id"],
        "request_id": row["request_id"],
        "role": row["role"],
        "content": row["content"],
        "status": row["status"],
        "attempt": row["attempt"],
        "tokens": row["tokens"],
        "created_at": row["created_at"].isoformat(),
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
    }


def _branch_message(row: dict[str, Any]) -> dict[str, Any]:
    """A message with its place in the tree: `sibling_index` of `sibling_count`, and the
    request ids of its siblings (oldest first) to switch to (`POST .../branch`)."""
    siblings = row["siblings"] or [row["node"] or row["request_id"]]
    node = row["node"] or row["request_id"]
    return {
        **_message(row),
        "parent_request_id": row["parent_request_id"],
        "branch": row["branch"],
        "sibling_count": len(siblings),
        "sibling_index": siblings.index(node) if node in siblings else 0,
        "sibling_request_ids": siblings,
    }


def _page(
    rows: list[dict[str, Any]], limit: int, key: str, items: list[dict[str, Any]]
) -> dict[str, Any]:
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    return {
        "object": "list",
        "data": items[:limit],
        "has_more": more,
        "next_cursor": encode_keyset(last[key], last["id"]) if last else None,
    }


@router.get("")
async def list_conversations(
    state: State, user: CurrentUser, limit: Limit = 20, cursor: str | None = None
) -> dict[str, Any]:
    """The caller's conversations, most recently active first."""
    async with state.pool.connection() as conn:
        rows = await views.conversations_page(conn, user, decode_keyset(cursor), limit)
    return _page(rows, limit, "updated_at", [_conversation(r) for r in rows])


@router.get("/{conversation_id}")
async def get_conversation(state: State, user: CurrentUser, conversation_id: str) -> dict[str, Any]:
    """One of the caller's conversations."""
    async with state.pool.connection() as conn:
        row = await views.conversation(conn, user, conversation_id)
    if row is None:
        raise NotFound(f"No conversation {conversation_id!r}.", param="conversation_id")
    return _conversation(row)


@router.get("/{conversation_id}/messages")
async def list_messages(
    state: State,
    user: CurrentUser,
    conversation_id: str,
    limit: Limit = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The current branch's messages, newest first (walk the cursor toward the root)."""
    after = decode_keyset(cursor)
    async with state.pool.connection() as conn:
        if await views.conversation(conn, user, conversation_id) is None:
            raise NotFound(f"No conversation {conversation_id!r}.", param="conversation_id")
        rows = await views.branch_page(conn, conversation_id, after, limit)
    return _page(rows, limit, "created_at", [_branch_message(r) for r in rows])


@router.get("/{conversation_id}/tree")
async def get_tree(state: State, user: CurrentUser, conversation_id: str) -> dict[str, Any]:
    """Every message of every branch, oldest first, and the current leaf."""
    async with state.pool.connection() as conn:
        if await views.conversation(conn, user, conversation_id) is None:
            raise NotFound(f"No conversation {conversation_id!r}.", param="conversation_id")
        rows = await views.tree(conn, conversation_id)
        leaf = await views.current_leaf(conn, conversation_id)
    return {
        "object": "conversation.tree",
        "conversation_id": conversation_id,
        "current_request_id": leaf,
        "data": [_branch_message(r) for r in rows],
    }
