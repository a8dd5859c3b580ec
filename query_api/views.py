"""Read-side SQL over the `chatlog.*` read models (ARCHITECTURE §4): plain queries, no ORM.

Every query is scoped by the caller's user id, so another user's ids look exactly like
ids that do not exist. An id holding U+0000 (`%00` in a path) names nothing Postgres can
store, so the lookups answer "none" for it instead of sending it (a DataError).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from infra.http import has_nul

Row = dict[str, Any]
Keyset = tuple[datetime, str] | None

TERMINAL = frozenset({"finished", "cancelled", "failed"})


async def _all(conn: AsyncConnection[Any], sql: str, params: Any) -> list[Row]:
    # dict rows per cursor: the pool's connections keep tuple rows for infra.auth
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)  # type: ignore[arg-type]  # constant SQL only
        return await cur.fetchall()


async def _one(conn: AsyncConnection[Any], sql: str, params: Any) -> Row | None:
    rows = await _all(conn, sql, params)
    return rows[0] if rows else None


async def conversations_page(
    conn: AsyncConnection[Any], user_id: str, after: Keyset, limit: int
) -> list[Row]:
    """Newest activity first; keyset on (updated_at, id). Fetches limit + 1 to see more."""
    return await _all(
        conn,
        """SELECT id, title, status, created_at, updated_at, last_request_id
             FROM chatlog.conversations
            WHERE user_id = %(user)s
              AND (%(at)s::timestamptz IS NULL OR (updated_at, id) < (%(at)s, %(id)s))
            ORDER BY updated_at DESC, id DESC
            LIMIT %(n)s""",
        {
            "user": user_id,
            "at": after[0] if after else None,
            "id": after[1] if after else None,
            "n": limit + 1,
        },
    )


async def conversation(
    conn: AsyncConnection[Any], user_id: str, conversation_id: str
) -> Row | None:
    if has_nul(conversation_id):
        return None
    return await _one(
        conn,
        """SELECT id, title, status, created_at, updated_at, last_request_id
             FROM chatlog.conversations WHERE id = %s AND user_id = %s""",
        (conversation_id, user_id),
    )


# The conversation's tree (see 004_tree.sql): `nodes` gives each request the answers to
# its user message (the requests sharing its origin), `turns` each origin the user messages
# after its parent (the origins sharing that parent); both in creation order. A row whose
# prompt is not folded yet counts as its own origin.
_TREE = """nodes AS (
    SELECT request_id, parent_request_id, branch, created_at,
           COALESCE(origin_request_id, request_id) AS origin,
           array_agg(request_id) OVER (PARTITION BY COALESCE(origin_request_id, request_id)
               ORDER BY created_at, request_id
               ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS answers
      FROM chatlog.completions WHERE conversation_id = %(c)s
), turns AS (
    SELECT request_id AS origin,
           array_agg(request_id) OVER (PARTITION BY parent_request_id
               ORDER BY created_at, request_id
               ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS edits
      FROM chatlog.completions
     WHERE conversation_id = %(c)s AND COALESCE(origin_request_id, request_id) = request_id
)"""
_TREE_COLUMNS = """m.id, m.conversation_id, m.request_id, m.role, m.content, m.status, m.attempt,
       m.tokens, m.created_at, m.finished_at, n.parent_request_id, n.branch,
       CASE WHEN m.id = m.request_id || ':assistant' THEN n.answers
            WHEN m.id = m.request_id || ':user' THEN t.edits END AS siblings,
       CASE WHEN m.id = m.request_id || ':assistant' THEN m.request_id
            ELSE n.origin END AS node
  FROM chatlog.messages m
  LEFT JOIN nodes n ON n.request_id = m.request_id
  LEFT JOIN turns t ON t.origin = n.origin"""


async def branch_page(
    conn: AsyncConnection[Any], conversation_id: str, after: Keyset, limit: int
) -> list[Row]:
    """The current branch (root to the current leaf), newest first; keyset on (created_at,
    id), which never change: stable under inserts. Each row with `siblings` (request ids,
    oldest first) and `node` (its own id among them). Fetches limit + 1 to see more."""
    return await _all(
        conn,
        """WITH RECURSIVE path(request_id, depth) AS (
               SELECT COALESCE(current_request_id, last_request_id), 0
                 FROM chatlog.conversations WHERE id = %(c)s
             UNION ALL
               SELECT c.parent_request_id, p.depth + 1 FROM path p
                 JOIN chatlog.completions c
                   ON c.request_id = p.request_id AND c.conversation_id = %(c)s
                WHERE c.parent_request_id IS NOT NULL AND p.depth < 100000
           ), """
        + _TREE
        + " SELECT "
        + _TREE_COLUMNS
        + """ WHERE m.conversation_id = %(c)s
              AND m.request_id IN (SELECT request_id FROM path)
              AND (%(at)s::timestamptz IS NULL OR (m.created_at, m.id) < (%(at)s, %(id)s))
            ORDER BY m.created_at DESC, m.id DESC
            LIMIT %(n)s""",
        {
            "c": conversation_id,
            "at": after[0] if after else None,
            "id": after[1] if after else None,
            "n": limit + 1,
        },
    )


async def tree(conn: AsyncConnection[Any], conversation_id: str) -> list[Row]:
    """Every message of every branch, oldest first, with its place in the tree."""
    return await _all(
        conn,
        "WITH "
        + _TREE
        + " SELECT "
        + _TREE_COLUMNS
        + " WHERE m.conversation_id = %(c)s ORDER BY m.created_at, m.id",
        {"c": conversation_id},
    )


async def current_leaf(conn: AsyncConnection[Any], conversation_id: str) -> str | None:
    row = await _one(
        conn,
        "SELECT COALESCE(current_request_id, last_request_id) AS leaf"
        " FROM chatlog.conversations WHERE id = %s",
        (conversation_id,),
    )
    return None if row is None else row["leaf"]


async def completion(conn: AsyncConnection[Any], request_id: str) -> Row | None:
    """The completion row joined with its assistant message (text so far), any owner."""
    if has_nul(request_id):
        return None
    return await _one(
        conn,
        """SELECT c.request_id, c.conversation_id, c.user_id, c.status, c.model, c.attempt,
                  c.finish_reason, c.usage, c.ttft_ms, c.error, c.created_at, c.updated_at,
                  m.content, m.tokens, m.finished_at
             FROM chatlog.completions c
             LEFT JOIN chatlog.messages m ON m.id = c.request_id || ':assistant'
            WHERE c.request_id = %s""",
        (request_id,),
    )


async def chunks(
    conn: AsyncConnection[Any], request_id: str, attempt: int, from_seq: int
) -> list[Row]:
    return await _all(
        conn,
        """SELECT attempt, seq, text, token_count FROM chatlog.chunks
            WHERE request_id = %s AND attempt = %s AND seq >= %s ORDER BY seq""",
        (request_id, attempt, from_seq),
    )


async def owner_of(conn: AsyncConnection[Any], request_id: str) -> str | None:
    if has_nul(request_id):
        return None
    row = await _one(
        conn, "SELECT user_id FROM chatlog.completions WHERE request_id = %s", (request_id,)
    )
    return None if row is None else str(row["user_id"])
