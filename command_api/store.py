"""The command side's Postgres state (schema `command`): admission, ownership, idempotency.

All writes here are the command API's own bookkeeping; read models are never written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from command_api.batching import Batcher
from command_api.ratelimit import WindowState
from command_api.settings import CommandSettings
from schemas.codec import Headers

Verdict = Literal["ok", "rate_limited", "too_many_generations", "conversation_busy", "unauthorized"]


# (key hash, user or None, request, conversation, new conversation?, expected last request)
_AdmitItem = tuple[str, str | None, str, str, bool, str | None]


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    window: WindowState
    running: int
    user_id: str | None  # the caller (resolved from the key when it was not known)


@dataclass(frozen=True)
class ConversationRow:
    id: str
    user_id: str
    last_request_id: str | None


@dataclass(frozen=True)
class RequestRow:
    request_id: str
    user_id: str
    conversation_id: str
    cancel_requested: bool


@dataclass(frozen=True)
class IdempotencyRecord:
    """An existing key: same body (`matches`), and its stored response once `done`.

    `stale`: pending for longer than any request takes (`idempotency_pending_s`), i.e. its
    process failed mid-request. `admitted`: (conversation id, admission time) of the key's
    request while it is admitted, i.e. not revoked: its event may well be in the log.
    `event`: that request's encoded PromptSubmitted (value, headers), stored before its
    admission (None in rows written before it was).
    """

    matches: bool
    request_id: str
    done: bool
    response: dict[str, Any] | None
    stale: bool = False
    admitted: tuple[str, datetime] | None = None
    event: tuple[bytes, Headers] | None = None


def body_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class CommandStore:
    """Typed operations on schema `command`, over a shared async connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Any], settings: CommandSettings) -> None:
        self.pool = pool
        self._s = settings
        self._admissions: Batcher[_AdmitItem, Admission] = Batcher(
            self._admit_many,
            max_batch=settings.admit_batch_max,
            concurrency=settings.admit_concurrency,
        )

    async def admit(
        self,
        *,
        user_id: str | None,
        key_hash: str,
        request_id: str,
        conversation_id: str,
        new_conversation: bool,
        expected_last: str | None,
    ) -> Admission:
        """Atomically apply the limits and record the request (see `command.admit_prompt`).

        `user_id` None: the caller's key (`key_hash`) is resolved in the same statement,
        so an uncached caller costs no extra round trip; verdict 'unauthorized' if no key.
        Concurrent admissions share round trips (`batching.Batcher`, `command.admit_batch`).
        """
        item = (key_hash, user_id, request_id, conversation_id, new_conversation, expected_last)
        return await self._admissions.submit(item)

    async def _admit_many(self, items: list[_AdmitItem]) -> list[Admission]:
        s = self._s
        limits = (
            s.rate_limit_per_min,
            s.rate_limit_window_s,
            s.max_concurrent_generations,
            s.generation_horizon_s,
            s.generation_lease_s,
        )
        async with self.pool.connection() as conn:
            if len(items) == 1:
                cur = await conn.execute(
                    "SELECT 1, * FROM command.admit_prompt("
                    "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (*items[0], *limits),
                )
            else:
                columns = [list(c) for c in zip(*items, strict=True)]
                cur = await conn.execute(
                    "SELECT * FROM command.admit_batch("
                    "%s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[],"
                    " %s::text[], %s, %s, %s, %s, %s)",
                    (*columns, *limits),
                )
            rows = await cur.fetchall()
        out: list[Admission | None] = [None] * len(items)
        for row in rows:
            window = WindowState(s.rate_limit_per_min, s.rate_limit_window_s, int(row[2]), row[3])
            out[int(row[0]) - 1] = Admission(row[1], window, int(row[4]), row[5])
        if any(a is None for a in out):
            raise RuntimeError("command.admit_batch left an admission unanswered")
        return [a for a in out if a is not None]

    async def revoke(
        self,
        *,
        request_id: str,
        conversation_id: str,
        new_conversation: bool,
        prev_last: str | None,
    ) -> None:
        """Undo an admission whose event was not appended (refunds the rate limit too)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM command.requests WHERE request_id = %s", (request_id,))
            if new_conversation:
                await conn.execute(
                    "DELETE FROM command.conversations WHERE id = %s AND last_request_id = %s",
                    (conversation_id, request_id),
                )
            else:
                await conn.execute(
                    "UPDATE command.conversations SET last_request_id = %s"
                    " WHERE id = %s AND last_request_id = %s",
                    (prev_last, conversation_id, request_id),
                )

    async def conversation(self, conversation_id: str, user_id: str) -> ConversationRow | None:
        """The caller's live conversation, adopting one the read model knows but we do not
        (e.g. rebuilt from the log); None for others' and deleted ones."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, user_id, last_request_id, deleted_at FROM command.conversations"
                " WHERE id = %s",
                (conversation_id,),
            )
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    "INSERT INTO command.conversations (id, user_id, last_request_id)"
                    " SELECT id, user_id, last_request_id FROM chatlog.conversations"
                    " WHERE id = %s ON CONFLICT (id) DO NOTHING"
                    " RETURNING id, user_id, last_request_id, NULL",
                    (conversation_id,),
                )
                row = await cur.fetchone()
        if row is None or row[1] != user_id or row[3] is not None:
            return None
        return ConversationRow(row[0], row[1], row[2])

    async def mark_deleted(self, conversation_id: str, *, deleted: bool = True) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE command.conversations"
                " SET deleted_at = CASE WHEN %s THEN now() END WHERE id = %s",
                (deleted, conversation_id),
            )

    async def request(self, request_id: str, user_id: str) -> RequestRow | None:
        """The caller's request; None for others' and unknown ones."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT r.request_id, r.user_id, r.conversation_id, r.cancel_requested_at"
                " FROM command.requests r JOIN command.conversations c"
                " ON c.id = r.conversation_id AND c.deleted_at IS NULL"
                " WHERE r.request_id = %s",
                (request_id,),
            )
            row = await cur.fetchone()
        if row is None or row[1] != user_id:
            return None
        return RequestRow(row[0], row[1], row[2], row[3] is not None)

    async def mark_cancel_requested(self, request_id: str) -> bool:
        """Record the cancel; False when one was already recorded (nothing more to send)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE command.requests SET cancel_requested_at = now()"
                " WHERE request_id = %s AND cancel_requested_at IS NULL",
                (request_id,),
            )
            return bool(cur.rowcount == 1)

    async def unmark_cancel_requested(self, request_id: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE command.requests SET cancel_requested_at = NULL WHERE request_id = %s",
                (request_id,),
            )

    async def claim_key(
        self, user_id: str, key: str, digest: str, request_id: str
    ) -> IdempotencyRecord | None:
        """Claim an Idempotency-Key for `request_id`; None = claimed, else the existing one.

        The row names its request before that request is admitted or appended. A stale
        pending key is reclaimed only when its request was never admitted (or was revoked):
        one that was admitted may be in the log already (a failure between Kafka's ack and
        `complete_key`), so the caller answers that request instead of appending another.
        """
        pending_s = self._s.idempotency_pending_s
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO command.idempotency_keys AS k"
                " (user_id, key, body_hash, request_id, state, created_at)"
                " VALUES (%s, %s, %s, %s, 'pending', now())"
                " ON CONFLICT (user_id, key) DO UPDATE SET body_hash = EXCLUDED.body_hash,"
                " request_id = EXCLUDED.request_id, state = 'pending', response = NULL,"
                " created_at = now()"
                " WHERE k.created_at < now() - make_interval(secs => %s)"
                " OR (k.state = 'pending' AND k.created_at < now() - make_interval(secs => %s)"
                "     AND NOT EXISTS (SELECT 1 FROM command.requests r"
                "                      WHERE r.request_id = k.request_id))"
                " RETURNING request_id",
                (user_id, key, digest, request_id, self._s.idempotency_ttl_s, pending_s),
            )
            if await cur.fetchone() is not None:
                return None
            cur = await conn.execute(
                "SELECT k.body_hash, k.request_id, k.state, k.response,"
                " k.created_at < now() - make_interval(secs => %s),"
                " r.conversation_id, r.created_at, k.event, k.event_headers"
                " FROM command.idempotency_keys k"
                " LEFT JOIN command.requests r ON r.request_id = k.request_id"
                " WHERE k.user_id = %s AND k.key = %s",
                (pending_s, user_id, key),
            )
            row = await cur.fetchone()
        if row is None:  # deleted between the two statements: a released claim; try again
            return await self.claim_key(user_id, key, digest, request_id)
        admitted = None if row[5] is None else (row[5], row[6])
        event = None
        if row[7] is not None:
            event = (bytes(row[7]), [(k, None if v is None else v.encode("latin-1"))
                                     for k, v in row[8]])  # fmt: skip
        return IdempotencyRecord(
            row[0] == digest, row[1], row[2] == "done", row[3], bool(row[4]), admitted, event
        )

    async def stash_event(
        self, user_id: str, key: str, request_id: str, event: tuple[bytes, Headers]
    ) -> None:
        """Keep the key's request's encoded event, BEFORE its admission: a key found stale
        and admitted then always has the event, which its retry appends (again)."""
        value, headers = event
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE command.idempotency_keys SET event = %s, event_headers = %s"
                " WHERE user_id = %s AND key = %s AND request_id = %s",
                (value, Jsonb([(k, v.decode("latin-1") if isinstance(v, bytes) else v)
                               for k, v in headers]),
                 user_id, key, request_id),
            )  # fmt: skip

    async def complete_key(self, user_id: str, key: str, response: dict[str, Any]) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE command.idempotency_keys SET state = 'done', response = %s"
                " WHERE user_id = %s AND key = %s",
                (Jsonb(response), user_id, key),
            )

    async def release_key(self, user_id: str, key: str, request_id: str) -> None:
        """Forget a claim whose request failed, so a retry can go through."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM command.idempotency_keys"
                " WHERE user_id = %s AND key = %s AND request_id = %s AND state = 'pending'",
                (user_id, key, request_id),
            )

    async def purge_expired_keys(self) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM command.idempotency_keys"
                " WHERE created_at < now() - make_interval(secs => %s)",
                (self._s.idempotency_ttl_s,),
            )
            return int(cur.rowcount)
