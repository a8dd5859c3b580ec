"""What the command API reads from the read model (schema `chatlog`, written by processors).

Continuing a conversation needs its full history, and the history is only complete once
the projection has folded the conversation's last completion: so we wait (bounded) for
that request to be terminal in `chatlog.completions`, then read `chatlog.messages`.

A conversation is a tree of requests (`completions.parent_request_id`): a prompt's history
is the path from the root to its parent, never the other branches.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, LiteralString, cast

from psycopg_pool import AsyncConnectionPool

from schemas import ChatMessage

TERMINAL = ("finished", "cancelled", "failed")

# The requests from %(leaf)s up to the root. A parent is always older than its child, so
# the walk ends; the depth bound only guards a read model corrupted by hand.
PATH: LiteralString = (
    "WITH RECURSIVE path(request_id, depth) AS ("
    " SELECT %(leaf)s::text, 0"
    " UNION ALL SELECT c.parent_request_id, p.depth + 1 FROM path p"
    " JOIN chatlog.completions c ON c.request_id = p.request_id AND c.conversation_id = %(c)s"
    " WHERE c.parent_request_id IS NOT NULL AND p.depth < 100000) "
)


@dataclass(frozen=True)
class Turn:
    """One request's place in the tree and its own messages (what a regenerate or an edit
    of it re-sends): `context` is non-empty only for a root, which stores its whole context."""

    request_id: str
    parent_request_id: str | None
    origin_request_id: str
    model: str
    context: tuple[ChatMessage, ...]
    user: ChatMessage


@dataclass(frozen=True)
class CompletionState:
    """A request's state as the read model knows it (`queued` before the projection has it)."""

    status: str
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class ReadModel:
    """Plain SQL over `chatlog.*` (read-only)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def completion(self, request_id: str) -> CompletionState:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT status, finish_reason, usage FROM chatlog.completions"
                " WHERE request_id = %s",
                (request_id,),
            )
            row = await cur.fetchone()
        return CompletionState("queued") if row is None else CompletionState(*row)

    async def wait_terminal(self, request_id: str, timeout_s: float) -> bool:
        """Poll (10 ms doubling to 200 ms) until the request is terminal; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + timeout_s, 0.01
        while True:
            if (await self.completion(request_id)).terminal:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 0.2)

    async def history(
        self, conversation_id: str, up_to_request: str | None = None
    ) -> list[ChatMessage]:
        """The turns of one branch, oldest first: the context its root brought (system,
        user, assistant messages), user prompts and finished answers.

        The branch ends at `up_to_request` (included), by default at the current leaf.
        """
        leaf = up_to_request
        if leaf is None:
            leaf = (await self.leaf(conversation_id))[0]
        if leaf is None:
            return []
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                PATH + "SELECT m.role, m.content FROM chatlog.messages m"
                " WHERE m.conversation_id = %(c)s"
                " AND m.request_id IN (SELECT request_id FROM path)"
                " AND (m.role <> 'assistant' OR m.status = 'finished')"
                " ORDER BY m.created_at, m.id",
                {"c": conversation_id, "leaf": leaf},
            )
            rows = await cur.fetchall()
        return [ChatMessage(role=r, content=c) for r, c in rows]

    async def leaf(self, conversation_id: str) -> tuple[str | None, str | None]:
        """(current leaf, newest prompt folded) of the conversation, as the read model has
        them; the leaf differs from the newest prompt after a BranchSwitched."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT COALESCE(current_request_id, last_request_id), last_request_id"
                " FROM chatlog.conversations WHERE id = %s",
                (conversation_id,),
            )
            row = await cur.fetchone()
        return (None, None) if row is None else (row[0], row[1])

    async def turn(self, conversation_id: str, request_id: str) -> Turn | None:
        """The request's place in the tree and its own messages; None before its prompt
        is folded."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT c.parent_request_id, COALESCE(c.origin_request_id, c.request_id),"
                " c.model, c.user_id <> '' FROM chatlog.completions c"
                " WHERE c.request_id = %s AND c.conversation_id = %s",
                (request_id, conversation_id),
            )
            node = await cur.fetchone()
            cur = await conn.execute(
                "SELECT id, role, content FROM chatlog.messages WHERE request_id = %s"
                " AND conversation_id = %s AND id <> request_id || ':assistant'"
                " ORDER BY created_at, id",
                (request_id, conversation_id),
            )
            rows = await cur.fetchall()
        own = {i: ChatMessage(role=r, content=c) for i, r, c in rows}
        user = own.pop(f"{request_id}:user", None)
        if node is None or not node[3] or user is None:
            return None
        return Turn(request_id, node[0], node[1], node[2], tuple(own.values()), user)

    async def newest_leaf_under(self, conversation_id: str, request_id: str) -> str | None:
        """The newest request in the subtree of `request_id` (itself included): a leaf,
        since a child is always newer than its parent. None: no such request."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "WITH RECURSIVE sub(request_id, created_at, depth) AS ("
                " SELECT request_id, created_at, 0 FROM chatlog.completions"
                " WHERE request_id = %(r)s AND conversation_id = %(c)s AND user_id <> ''"
                " UNION ALL SELECT c.request_id, c.created_at, s.depth + 1 FROM sub s"
                " JOIN chatlog.completions c ON c.parent_request_id = s.request_id"
                " AND c.conversation_id = %(c)s WHERE s.depth < 100000)"
                " SELECT request_id FROM sub ORDER BY created_at DESC, request_id DESC LIMIT 1",
                {"r": request_id, "c": conversation_id},
            )
            row = await cur.fetchone()
        return None if row is None else cast(str, row[0])

    async def has_request(self, conversation_id: str, request_id: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM chatlog.messages WHERE conversation_id = %s AND request_id = %s"
                " AND role = 'assistant'",
                (conversation_id, request_id),
            )
            return await cur.fetchone() is not None


def compose(history: list[ChatMessage], new: tuple[ChatMessage, ...]) -> tuple[ChatMessage, ...]:
    """Full context = the system messages, the history, then the other new messages.

    The read model keeps the first prompt's whole context (its system prompt too) and each
    later prompt's last message. A system message sent with this turn replaces the stored
    one (no duplicate instructions); either way it goes first, where a model expects it.
    """
    system = [m for m in new if m.role == "system"]
    if not system:
        system = [m for m in history if m.role == "system"]
    turns = [m for m in history if m.role != "system"]
    rest = [m for m in new if m.role != "system"]
    return (*system, *turns, *rest)
