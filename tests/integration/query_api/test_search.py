"""Search in both modes over real services: typo-tolerant Meilisearch, exact Postgres
full-text; never another user's message."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest

from infra.auth import create_key
from infra.clients import meili_client, pg_connect
from infra.settings import InfraSettings
from schemas.resources import MESSAGES_INDEX
from tests.integration.query_api.conftest import Projection, Users, new_id, query_settings, serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus(infra_settings: InfraSettings, projection: Projection) -> dict[str, str]:
    """Alice and Bob each wrote about Kafka streams; written to Postgres and the index."""
    docs, ids = [], {}
    for user, text in (
        ("alice", "How do Kafka streams keep ordering per partition?"),
        ("bob", "Bob's private notes on kafka streams and secrets"),
        ('evil" OR user_id != "x', "kafka streams from a hostile user id"),
    ):
        cid, rid = new_id("c"), new_id("r")
        at = projection.prompt(user, cid, rid, text)
        ids[user] = f"{rid}:user"
        docs.append(
            {
                "id": f"{rid}_user",  # Meilisearch ids: [A-Za-z0-9_-] only
                "conversation_id": cid,
                "request_id": rid,
                "user_id": user,
                "role": "user",
                "content": text,
                "title": None,
                "created_at": int(at.timestamp() * 1000),
            }
        )
    client = meili_client(infra_settings)
    task = client.index(infra_settings.index_name(MESSAGES_INDEX)).add_documents(docs)
    assert client.wait_for_task(task.task_uid, timeout_in_ms=30_000).status == "succeeded"
    return ids


@pytest.fixture(scope="module")
async def meili(infra_settings: InfraSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(query_settings(infra_settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
    ):
        yield c


@pytest.fixture(scope="module")
async def postgres(infra_settings: InfraSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(query_settings(infra_settings, meili_url=None)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
    ):
        yield c


async def test_meilisearch_finds_a_misspelt_word_only_in_the_callers_messages(
    meili: httpx.AsyncClient, users: Users, corpus: dict[str, str]
) -> None:
    r = await meili.post(
        "/v1/conversations/search", json={"query": "kafak strems"}, headers=users.headers("alice")
    )
    body = r.json()
    assert r.status_code == 200 and body["backend"] == "meilisearch"
    assert [h["message_id"] for h in body["data"]] == [corpus["alice"]]
    hit = body["data"][0]
    assert "<mark>" in hit["snippet"] and hit["links"]["conversation"].endswith(
        hit["conversation_id"]
    )
    assert datetime.fromisoformat(hit["created_at"]).year >= 2026
    same = (
        await meili.get("/v1/search", params={"q": "kafak"}, headers=users.headers("alice"))
    ).json()
    assert [h["message_id"] for h in same["data"]] == [corpus["alice"]]


async def test_postgres_finds_an_exact_word_only_in_the_callers_messages(
    postgres: httpx.AsyncClient, users: Users, corpus: dict[str, str]
) -> None:
    body = (
        await postgres.get("/v1/search", params={"q": "ordering"}, headers=users.headers("alice"))
    ).json()
    assert body["backend"] == "postgres"
    assert [h["message_id"] for h in body["data"]] == [corpus["alice"]]
    assert "<mark>ordering</mark>" in body["data"][0]["snippet"]
    body = (
        await postgres.get("/v1/search", params={"q": "secrets"}, headers=users.headers("alice"))
    ).json()
    assert body["data"] == []


async def test_search_pages_with_a_cursor(
    postgres: httpx.AsyncClient, users: Users, projection: Projection, corpus: dict[str, str]
) -> None:
    cid = new_id("c")
    for _ in range(5):
        projection.prompt("alice", cid, new_id("r"), "zebra crossing")
    seen, cursor = [], None
    while True:
        body = (
            await postgres.post(
                "/v1/conversations/search",
                json={"query": "zebra", "limit": 2, "cursor": cursor},
                headers=users.headers("alice"),
            )
        ).json()
        seen += [h["message_id"] for h in body["data"]]
        if not body["has_more"]:
            break
        cursor = body["next_cursor"]
    assert len(seen) == len(set(seen)) == 5


async def test_a_user_id_with_quotes_cannot_widen_the_filter(
    meili: httpx.AsyncClient, infra_settings: InfraSettings, corpus: dict[str, str]
) -> None:
    evil = 'evil" OR user_id != "x'
    with pg_connect(infra_settings, autocommit=True) as conn:
        key = create_key(conn, evil)
    body = (
        await meili.get(
            "/v1/search", params={"q": "kafka streams"}, headers={"Authorization": f"Bearer {key}"}
        )
    ).json()
    assert [h["message_id"] for h in body["data"]] == [corpus[evil]]


async def test_snippets_escape_the_message_and_mark_only_the_hits(
    meili: httpx.AsyncClient,
    postgres: httpx.AsyncClient,
    infra_settings: InfraSettings,
    projection: Projection,
    users: Users,
) -> None:
    text = "<img src=x onerror=alert(1)> kafka"
    cid, rid = new_id("c"), new_id("r")
    at = projection.prompt("bob", cid, rid, text)
    client = meili_client(infra_settings)
    doc = {
        "id": f"{rid}_user",
        "conversation_id": cid,
        "request_id": rid,
        "user_id": "bob",
        "role": "user",
        "content": text,
        "title": None,
        "created_at": int(at.timestamp() * 1000),
    }
    task = client.index(infra_settings.index_name(MESSAGES_INDEX)).add_documents([doc])
    assert client.wait_for_task(task.task_uid, timeout_in_ms=30_000).status == "succeeded"
    for api in (meili, postgres):
        r = await api.get("/v1/search", params={"q": "kafka"}, headers=users.headers("bob"))
        snippets = {h["message_id"]: h["snippet"] for h in r.json()["data"]}
        assert snippets[f"{rid}:user"] == "&lt;img src=x onerror=alert(1)&gt; <mark>kafka</mark>"


@pytest.mark.parametrize("query", ["kafka\x00", "kafka \ud800"])
async def test_a_query_no_backend_can_encode_is_a_400(
    meili: httpx.AsyncClient, postgres: httpx.AsyncClient, users: Users, query: str
) -> None:
    raw = json.dumps({"query": query}).encode()  # ASCII escapes: \u0000, \ud800
    for api in (meili, postgres):
        r = await api.post(
            "/v1/conversations/search",
            content=raw,
            headers=users.headers("alice", **{"content-type": "application/json"}),
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "query"
    r = await postgres.get("/v1/search", params={"q": "kafka\x00"}, headers=users.headers("alice"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "q"


async def test_an_unreachable_search_backend_is_a_503_without_its_error_text(
    infra_settings: InfraSettings, users: Users
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    async with (
        serve(query_settings(infra_settings, meili_url=dead)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as c,
    ):
        r = await c.get("/v1/search", params={"q": "kafka"}, headers=users.headers("alice"))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["message"] == "Search is unavailable; retry later."
    assert dead.rsplit(":", 1)[1] not in r.text
