"""Search over the caller's messages: Meilisearch when configured, Postgres otherwise.

Both backends answer the same `SearchHit`s, so the endpoint and its response shape do not
know which one ran (ARCHITECTURE §5). Every query is filtered by the caller's user id.

A snippet is HTML: the message's text escaped, its hits wrapped in `<mark>`. Both backends
are asked to mark hits with private-use sentinels rather than tags, since a tag in the
backend's output cannot be told from the same text in the message (stored XSS for any
client that renders the snippet); `snippet_html` escapes, then turns sentinels into tags.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from infra.http import Unavailable

log = logging.getLogger(__name__)
MARK_PRE, MARK_POST = "<mark>", "</mark>"
# Private-use code points: what the backends put around a hit instead of the tags.
HIT_START, HIT_END = "\ue000", "\ue001"
_SENTINELS = re.compile(f"({HIT_START}|{HIT_END})")


def snippet_html(marked: str) -> str:
    """HTML of a backend's sentinel-marked text: escaped, hits in <mark>…</mark>.

    A message may itself hold a sentinel code point: tags are emitted only as a balanced,
    non-nested sequence, so the worst such text can do is move a highlight."""
    out, open_ = [], False
    for part in _SENTINELS.split(marked):
        if part == HIT_START:
            if not open_:
                out.append(MARK_PRE)
            open_ = True
        elif part == HIT_END:
            if open_:
                out.append(MARK_POST)
            open_ = False
        else:
            out.append(html.escape(part, quote=True))
    if open_:
        out.append(MARK_POST)
    return "".join(out)


@dataclass(frozen=True)
class SearchHit:
    message_id: str
    conversation_id: str
    request_id: str
    role: str
    title: str | None
    snippet: str  # HTML: the text escaped, hits in <mark>…</mark> (snippet_html)
    created_at: datetime


class SearchBackend(Protocol):
    """Finds the caller's messages matching `query`, best first, `limit` from `offset`."""

    name: str

    async def search(self, user_id: str, query: str, limit: int, offset: int) -> list[SearchHit]:
        """Up to `limit` hits; a full page means there may be more."""


def meili_filter(user_id: str) -> str:
    """`user_id = "<id>"` with the id escaped, so no user id can widen the filter."""
    escaped = user_id.replace("\\", "\\\\").replace('"', '\\"')
    return f'user_id = "{escaped}"'


def _epoch(value: Any) -> datetime:
    number = float(value or 0)
    if number > 1e11:  # milliseconds
        number /= 1000
    return datetime.fromtimestamp(number, UTC)


class MeiliSearch:
    """Meilisearch over index `messages` (typo-tolerant; highlights by Meilisearch)."""

    name = "meilisearch"

    def __init__(
        self, url: str, key: str, index: str, client: httpx.AsyncClient | None = None
    ) -> None:
        self._url = f"{url.rstrip('/')}/indexes/{index}/search"
        self._client = client or httpx.AsyncClient(
            headers={"Authorization": f"Bearer {key}"}, timeout=10
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def search(self, user_id: str, query: str, limit: int, offset: int) -> list[SearchHit]:
        body = {
            "q": query,
            "filter": meili_filter(user_id),
            "limit": limit,
            "offset": offset,
            "attributesToCrop": ["content"],
            "cropLength": 40,
            "attributesToHighlight": ["content", "title"],
            "highlightPreTag": HIT_START,
            "highlightPostTag": HIT_END,
        }
        try:
            response = await self._client.post(self._url, json=body)
        except httpx.HTTPError as exc:
            log.warning("Meilisearch unreachable: %r", exc)
            raise Unavailable("Search is unavailable; retry later.") from exc
        if response.status_code == 404:  # the projection has not created the index yet
            return []
        if response.status_code >= 400:
            log.warning("Meilisearch answered %s: %s", response.status_code, response.text[:500])
            raise Unavailable("Search is unavailable; retry later.")
        hits = []
        for doc in response.json().get("hits", []):
            fmt = doc.get("_formatted") or {}
            hits.append(
                SearchHit(
                    # Meilisearch ids allow only [A-Za-z0-9_-], so the document id cannot
                    # be the message id `<request_id>:<role>`: rebuild it from the fields
                    message_id=f"{doc['request_id']}:{doc['role']}"
                    if doc.get("request_id") and doc.get("role")
                    else str(doc["id"]),
                    conversation_id=doc["conversation_id"],
                    request_id=doc.get("request_id", ""),
                    role=doc.get("role", ""),
                    title=doc.get("title"),
                    snippet=snippet_html(str(fmt.get("content") or doc.get("content", ""))),
                    created_at=_epoch(doc.get("created_at")),
                )
            )
        return hits


PG_SEARCH = """
SELECT m.id, m.conversation_id, m.request_id, m.role, c.title, m.created_at,
       ts_headline('english', m.content, q, %(headline)s) AS snippet
  FROM chatlog.messages m
  JOIN chatlog.conversations c ON c.id = m.conversation_id,
       websearch_to_tsquery('english', %(q)s) q
 WHERE c.user_id = %(user)s AND m.search @@ q
 ORDER BY ts_rank(m.search, q) DESC, m.created_at DESC, m.id DESC
 LIMIT %(n)s OFFSET %(o)s
"""
# One window around the best match, as Meilisearch's crop: fragment mode (MaxFragments)
# trims the words before a hit even in a message shorter than MaxWords.
PG_HEADLINE = f"StartSel={HIT_START}, StopSel={HIT_END}, MaxWords=40, MinWords=10"


class PostgresSearch:
    """Postgres full-text search over `chatlog.messages.search`, joined for the owner."""

    name = "postgres"

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def search(self, user_id: str, query: str, limit: int, offset: int) -> list[SearchHit]:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            params = {"q": query, "user": user_id, "n": limit, "o": offset, "headline": PG_HEADLINE}
            await cur.execute(PG_SEARCH, params)
            rows = await cur.fetchall()
        return [
            SearchHit(
                r["id"],
                r["conversation_id"],
                r["request_id"],
                r["role"],
                r["title"],
                snippet_html(r["snippet"]),
                r["created_at"],
            )
            for r in rows
        ]
