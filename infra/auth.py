"""API keys: `Authorization: Bearer <key>` -> user_id, shared by both HTTP services.

Keys are random (256 bits) and stored only as sha256 digests in `command.api_keys`, so a
leaked table does not leak keys; a slow password hash buys nothing for keys this long.

Revocation (`revoked_at` set) takes effect within `AUTH_CACHE_TTL_S` (5 s) in each API:
each keeps exactly one cache of resolved keys with that lifetime (the query API this
resolver's, the command API its own `AuthCache` in front of an uncached resolver), so the
bounds never stack.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import psycopg

KEY_PREFIX = "cl-"
# The longest a revoked key keeps working in either API (see the module docstring).
AUTH_CACHE_TTL_S = 5.0

AUTH_DDL = """
CREATE SCHEMA IF NOT EXISTS command;
CREATE TABLE IF NOT EXISTS command.api_keys (
    key_hash    text PRIMARY KEY,
    user_id     text NOT NULL,
    hint        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_user ON command.api_keys (user_id);
CREATE TABLE IF NOT EXISTS command.sessions (
    id_hash     text PRIMARY KEY,
    user_id     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON command.sessions (expires_at);
"""
# Browser sessions (`POST /v1/sessions`): a random id in an HttpOnly cookie, stored only as
# its sha256 digest with an expiry. The gateway passes the cookie on as a bearer token, so
# both APIs resolve a session exactly as a key (and within the same AUTH_CACHE_TTL_S after
# `DELETE /v1/sessions` or expiry).
SESSION_PREFIX = "cls-"
SESSION_COOKIE = "chatlog_session"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def apply_auth_ddl(conn: psycopg.Connection[Any]) -> None:
    """Create `command.api_keys` where missing (idempotent)."""
    conn.execute("SELECT pg_advisory_xact_lock(774412)")
    conn.execute(AUTH_DDL)  # type: ignore[arg-type]  # trusted constant


def create_key(conn: psycopg.Connection[Any], user_id: str) -> str:
    """Mint a key for `user_id`; the plain key is returned once and never stored."""
    if not user_id or len(user_id) > 200:
        raise ValueError("user id must be 1-200 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO command.api_keys (key_hash, user_id, hint) VALUES (%s, %s, %s)",
        (hash_key(key), user_id, key[:7]),
    )
    return key


async def create_session(conn: psycopg.AsyncConnection[Any], user_id: str, ttl_s: float) -> str:
    """A new session for `user_id` expiring in `ttl_s`; the plain id is returned once."""
    session = SESSION_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO command.sessions (id_hash, user_id, expires_at)"
        " VALUES (%s, %s, now() + make_interval(secs => %s))",
        (hash_key(session), user_id, ttl_s),
    )
    # Expired sessions go as new ones come (bounded work: an index range).
    await conn.execute("DELETE FROM command.sessions WHERE expires_at < now() - interval '1 day'")
    return session


async def end_session(conn: psycopg.AsyncConnection[Any], session: str) -> None:
    await conn.execute("DELETE FROM command.sessions WHERE id_hash = %s", (hash_key(session),))


def is_session(token: str) -> bool:
    return token.startswith(SESSION_PREFIX)


class KeyResolver:
    """Resolves bearer keys to user ids, caching hits for `ttl_s` (at most
    `AUTH_CACHE_TTL_S`, so a revoked key stops within that) so auth is not a query per
    call; `ttl_s=0` caches nothing (for a caller with its own cache in front)."""

    def __init__(self, ttl_s: float = AUTH_CACHE_TTL_S, max_entries: int = 10_000) -> None:
        if not 0 <= ttl_s <= AUTH_CACHE_TTL_S:
            raise ValueError(f"ttl_s must be 0-{AUTH_CACHE_TTL_S} s (the revocation bound)")
        self._ttl_s, self._max = ttl_s, max_entries
        self._cache: dict[str, tuple[str, float]] = {}

    async def user_for(self, conn: psycopg.AsyncConnection[Any], key: str) -> str | None:
        digest = hash_key(key)
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit and hit[1] > now:
            return hit[0]
        if is_session(key):
            sql = "SELECT user_id FROM command.sessions WHERE id_hash = %s AND expires_at > now()"
        else:
            sql = "SELECT user_id FROM command.api_keys WHERE key_hash = %s AND revoked_at IS NULL"
        cur = await conn.execute(sql, (digest,))  # type: ignore[arg-type]  # constants
        row = await cur.fetchone()
        if row is None:
            self._cache.pop(digest, None)
            return None
        if self._ttl_s > 0:
            if len(self._cache) >= self._max:
                self._cache.clear()  # crude but bounded; misses only cost one query
            self._cache[digest] = (row[0], now + self._ttl_s)
        return str(row[0])
