"""What the command API reads from the read model (schema `chatlog`, written by processors).

Continuing a conversation needs its full history, and the history is only complete once
the projection has folded the conversation's last completion: so we wait (bounded) for
that request to be terminal in `chatlog.completions`, then read `chatlog.messages`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, LiteralString

from psycopg_pool import AsyncConnectionPool

from schemas import ChatMessage

TERMINAL = ("finished", "cancelled", "failed")


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
        """The conversation's turns, oldest first: the context its first prompt brought
        (system, user, assistant messages), user prompts and finished answers.

        With `up_to_request`, only the turns up to and including that request (a branch).
        """
        cutoff: LiteralString = ""
        params: tuple[Any, ...] = (conversation_id,)
        if up_to_request is not None:
            cutoff = (
                " AND created_at <= (SELECT created_at FROM chatlog.messages"
                " WHERE request_id = %s AND role = 'assistant')"
            )
            params = (conversation_id, up_to_request)
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT role, content FROM chatlog.messages WHERE conversation_id = %s"
                " AND (role <> 'assistant' OR status = 'finished')"
                + cutoff
                + " ORDER BY created_at, id",
                params,
            )
            rows = await cur.fetchall()
        return [ChatMessage(role=r, content=c) for r, c in rows]

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
