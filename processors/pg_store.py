"""Postgres side of the projection: load the rows a batch touches, write the folded result.

Every write is one set-based statement over arrays (`INSERT ... SELECT FROM unnest(...)`),
so a batch of thousands of events costs a dozen round trips whatever its size. The schema
is a parameter: the live projection writes `chatlog`, a rebuild writes its own copy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from processors.fold import ConversationRow, FoldState, RequestRow

AConn = psycopg.AsyncConnection[Any]
TP = tuple[str, int]

LIVE_SCHEMA = "chatlog"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def checked_schema(name: str) -> str:
    """A schema name safe to format into SQL (ours are [a-z0-9_])."""
    if not _IDENT.match(name):
        raise ValueError(f"bad schema name {name!r}")
    return name


async def load_state(
    conn: AConn,
    schema: str,
    request_ids: Sequence[str],
    conversation_ids: Sequence[str],
) -> FoldState:
    """The stored rows of these requests and conversations, and which are tombstoned."""
    s = checked_schema(schema)
    state = FoldState()
    cur = await conn.execute(
        f"SELECT conversation_id FROM {s}.deleted_conversations WHERE conversation_id = ANY(%s)",
        (list(conversation_ids),),
    )
    state.deleted = {r[0] for r in await cur.fetchall()}
    if request_ids:
        cur = await conn.execute(
            f"SELECT c.request_id, c.conversation_id, c.user_id, c.model, c.status, c.attempt,"
            f" m.last_seq, m.tokens, c.created_at, c.updated_at, c.finish_reason, c.usage,"
            f" c.ttft_ms, c.error, m.finished_at, m.created_at, c.parent_request_id,"
            f" c.origin_request_id, c.branch"
            f" FROM {s}.completions c JOIN {s}.messages m"
            f"   ON m.request_id = c.request_id AND m.role = 'assistant'"
            f" WHERE c.request_id = ANY(%s)",
            (list(request_ids),),
        )
        for r in await cur.fetchall():
            state.requests[r[0]] = RequestRow(
                request_id=r[0], conversation_id=r[1], user_id=r[2], model=r[3],
                status=r[4], attempt=r[5], last_seq=r[6], tokens=r[7], created_at=r[8],
                updated_at=r[9], finish_reason=r[10], usage=r[11], ttft_ms=r[12],
                error=r[13], finished_at=r[14], message_created_at=r[15],
                parent_request_id=r[16], origin_request_id=r[17], branch=r[18],
            )  # fmt: skip
        cur = await conn.execute(
            f"SELECT request_id, attempt, seq, text, token_count FROM {s}.held_chunks"
            f" WHERE request_id = ANY(%s)",
            (list(request_ids),),
        )
        for rid, attempt, seq, text, tokens in await cur.fetchall():
            if rid in state.requests:
                state.requests[rid].held[(attempt, seq)] = (text, tokens)
    if conversation_ids:
        cur = await conn.execute(
            f"SELECT x.id, c.id IS NOT NULL, c.user_id, c.title, c.title_at, c.created_at,"
            f" c.updated_at, c.last_request_id, c.last_request_at, c.current_request_id,"
            f" c.current_at,"
            f" CASE WHEN c.id IS NULL THEN (SELECT max(m.finished_at) FROM {s}.messages m"
            f"   WHERE m.conversation_id = x.id AND m.role = 'assistant') END"
            f" FROM unnest(%s::text[]) AS x(id) LEFT JOIN {s}.conversations c ON c.id = x.id",
            (list(conversation_ids),),
        )
        for r in await cur.fetchall():
            state.conversations[r[0]] = ConversationRow(
                id=r[0], exists=r[1], user_id=r[2] or "", title=r[3], title_at=r[4],
                created_at=r[5], updated_at=r[6], last_request_id=r[7],
                last_request_at=r[8], current_request_id=r[9], current_at=r[10],
                finished_before=r[11],
            )  # fmt: skip
    return state


async def write_state(conn: AConn, schema: str, state: FoldState) -> None:
    """Write what the fold changed. Call inside the batch's transaction."""
    s = checked_schema(schema)
    await _erase(conn, s, state.newly_deleted)
    requests = [r for r in state.requests.values() if r.dirty]
    if requests:
        await _write_completions(conn, s, requests)
        await _write_assistant_messages(conn, s, requests)
        await _write_user_messages(conn, s, requests)
        await _write_chunks(conn, s, requests)
    conversations = [c for c in state.conversations.values() if c.dirty and c.exists]
    if conversations:
        await _write_conversations(conn, s, conversations)


async def _erase(conn: AConn, s: str, deleted: dict[str, datetime]) -> None:
    if not deleted:
        return
    ids = list(deleted)
    await conn.execute(
        f"INSERT INTO {s}.deleted_conversations (conversation_id, deleted_at)"
        f" SELECT * FROM unnest(%s::text[], %s::timestamptz[]) ON CONFLICT DO NOTHING",
        (ids, list(deleted.values())),
    )
    for table in ("chunks", "held_chunks"):
        await conn.execute(
            f"DELETE FROM {s}.{table} WHERE request_id IN"
            f" (SELECT request_id FROM {s}.messages WHERE conversation_id = ANY(%s))",
            (ids,),
        )
    await conn.execute(f"DELETE FROM {s}.messages WHERE conversation_id = ANY(%s)", (ids,))
    await conn.execute(f"DELETE FROM {s}.completions WHERE conversation_id = ANY(%s)", (ids,))
    await conn.execute(f"DELETE FROM {s}.conversations WHERE id = ANY(%s)", (ids,))


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


async def _write_completions(conn: AConn, s: str, rows: list[RequestRow]) -> None:
    cols = [
        [r.request_id for r in rows],
        [r.conversation_id for r in rows],
        [r.user_id for r in rows],
        [r.status for r in rows],
        [r.model for r in rows],
        [r.attempt for r in rows],
        [r.finish_reason for r in rows],
        [_json(r.usage) for r in rows],
        [r.ttft_ms for r in rows],
        [_json(r.error) for r in rows],
        [r.created_at for r in rows],
        [r.updated_at for r in rows],
        [r.parent_request_id for r in rows],
        [r.origin_request_id for r in rows],
        [r.branch for r in rows],
    ]
    await conn.execute(
        f"INSERT INTO {s}.completions (request_id, conversation_id, user_id, status, model,"
        f" attempt, finish_reason, usage, ttft_ms, error, created_at, updated_at,"
        f" parent_request_id, origin_request_id, branch)"
        f" SELECT a, b, c, d, e, f, g, h::jsonb, i, j::jsonb, k, l, m, n, o FROM unnest("
        f" %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[],"
        f" %s::text[], %s::float8[], %s::text[], %s::timestamptz[], %s::timestamptz[],"
        f" %s::text[], %s::text[], %s::text[])"
        f" AS x(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o)"
        f" ON CONFLICT (request_id) DO UPDATE SET conversation_id = EXCLUDED.conversation_id,"
        f" user_id = EXCLUDED.user_id, status = EXCLUDED.status, model = EXCLUDED.model,"
        f" attempt = EXCLUDED.attempt, finish_reason = EXCLUDED.finish_reason,"
        f" usage = EXCLUDED.usage, ttft_ms = EXCLUDED.ttft_ms, error = EXCLUDED.error,"
        f" created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,"
        f" parent_request_id = EXCLUDED.parent_request_id,"
        f" origin_request_id = EXCLUDED.origin_request_id, branch = EXCLUDED.branch",
        cols,
    )


async def _write_assistant_messages(conn: AConn, s: str, rows: list[RequestRow]) -> None:
    # Two statements: a restarted attempt replaces the text, any other appends to it.
    for reset in (True, False):
        part = [r for r in rows if r.reset is reset]
        if not part:
            continue
        content = "EXCLUDED.content" if reset else "m.content || EXCLUDED.content"
        await conn.execute(
            f"INSERT INTO {s}.messages AS m (id, conversation_id, request_id, role, content,"
            f" status, attempt, last_seq, tokens, created_at, finished_at)"
            f" SELECT a || ':assistant', b, a, 'assistant', c, d, e, f, g, h, i FROM unnest("
            f" %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::int[], %s::int[],"
            f" %s::timestamptz[], %s::timestamptz[]) AS x(a, b, c, d, e, f, g, h, i)"
            f" ON CONFLICT (id) DO UPDATE SET content = {content},"
            f" conversation_id = EXCLUDED.conversation_id, status = EXCLUDED.status,"
            f" attempt = EXCLUDED.attempt, last_seq = EXCLUDED.last_seq,"
            f" tokens = EXCLUDED.tokens, created_at = EXCLUDED.created_at,"
            f" finished_at = EXCLUDED.finished_at",
            [
                [r.request_id for r in part],
                [r.conversation_id for r in part],
                ["".join(r.appended) for r in part],
                [r.status for r in part],
                [r.attempt for r in part],
                [r.last_seq for r in part],
                [r.tokens for r in part],
                [r.message_created_at for r in part],
                [r.finished_at for r in part],
            ],
        )


async def _write_user_messages(conn: AConn, s: str, rows: list[RequestRow]) -> None:
    part = [(r, m) for r in rows for m in r.user_messages]
    if not part:
        return
    await conn.execute(
        f"INSERT INTO {s}.messages (id, conversation_id, request_id, role, content, status,"
        f" attempt, last_seq, tokens, created_at, finished_at)"
        f" SELECT a, b, c, d, e, 'finished', 0, -1, 0, f, f FROM unnest("
        f" %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])"
        f" AS x(a, b, c, d, e, f) ON CONFLICT (id) DO NOTHING",
        [
            [m[0] for _, m in part],
            [r.conversation_id for r, _ in part],
            [r.request_id for r, _ in part],
            [m[1] for _, m in part],
            [m[2] for _, m in part],
            [m[3] for _, m in part],
        ],
    )


async def _write_chunks(conn: AConn, s: str, rows: list[RequestRow]) -> None:
    dropped = [r for r in rows if r.drop_chunks_below is not None]
    if dropped:
        await conn.execute(
            f"DELETE FROM {s}.chunks c USING unnest(%s::text[], %s::int[]) AS x(r, a)"
            f" WHERE c.request_id = x.r AND c.attempt < x.a",
            [[r.request_id for r in dropped], [r.drop_chunks_below for r in dropped]],
        )
    chunks = [(r.request_id, *c) for r in rows for c in r.new_chunks]
    if chunks:
        # COPY, the bulk of a batch: never a conflict, since the fold only emits seq >
        # last_seq of the winning attempt, and (request, attempt) holds exactly 0..last_seq.
        async with conn.cursor().copy(
            f"COPY {s}.chunks (request_id, attempt, seq, text, token_count) FROM STDIN"
        ) as copy:
            for row in chunks:
                await copy.write_row(row)
    held = [r for r in rows if r.held_dirty]
    if held:
        await conn.execute(
            f"DELETE FROM {s}.held_chunks WHERE request_id = ANY(%s)",
            ([r.request_id for r in held],),
        )
        keep = [(r.request_id, a, q, t, n) for r in held for (a, q), (t, n) in r.held.items()]
        if keep:
            await conn.execute(
                f"INSERT INTO {s}.held_chunks (request_id, attempt, seq, text, token_count)"
                f" SELECT * FROM unnest(%s::text[], %s::int[], %s::int[], %s::text[], %s::int[])",
                [list(col) for col in zip(*keep, strict=True)],
            )


async def _write_conversations(conn: AConn, s: str, rows: list[ConversationRow]) -> None:
    await conn.execute(
        f"INSERT INTO {s}.conversations (id, user_id, title, status, created_at, updated_at,"
        f" last_request_id, title_at, last_request_at, current_request_id, current_at)"
        f" SELECT a, b, c, 'active', d, e, f, g, h, i, j FROM unnest(%s::text[], %s::text[],"
        f" %s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[], %s::timestamptz[],"
        f" %s::timestamptz[], %s::text[], %s::timestamptz[]) AS x(a, b, c, d, e, f, g, h, i, j)"
        f" ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, title = EXCLUDED.title,"
        f" created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,"
        f" last_request_id = EXCLUDED.last_request_id, title_at = EXCLUDED.title_at,"
        f" last_request_at = EXCLUDED.last_request_at,"
        f" current_request_id = EXCLUDED.current_request_id, current_at = EXCLUDED.current_at",
        [
            [c.id for c in rows],
            [c.user_id for c in rows],
            [c.title for c in rows],
            [c.created_at for c in rows],
            [c.updated_at for c in rows],
            [c.last_request_id for c in rows],
            [c.title_at for c in rows],
            [c.last_request_at for c in rows],
            [c.current_request_id for c in rows],
            [c.current_at for c in rows],
        ],
    )
