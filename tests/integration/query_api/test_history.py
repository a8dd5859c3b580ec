"""History endpoints over real Postgres: pagination, ownership, completion state, models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from infra.settings import InfraSettings
from tests.integration.query_api.conftest import Projection, Users, new_id, query_settings, serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def client(infra_settings: InfraSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(query_settings(infra_settings, models="m-default,m-other")) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
    ):
        yield c


async def walk(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], limit: int, between_pages=None
) -> list[str]:
    seen, cursor = [], None
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(url, params=params, headers=headers)).json()
        seen += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            return seen
        cursor = page["next_cursor"]
        if between_pages:
            between_pages()


async def test_messages_walk_each_exactly_once_while_new_ones_arrive(
    client: httpx.AsyncClient, users: Users, projection: Projection
) -> None:
    cid = new_id("conv")
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rids = [new_id("r") for _ in range(9)]
    for i, rid in enumerate(rids):
        # pairs share a timestamp: ties are broken by id
        projection.prompt("alice", cid, rid, f"prompt {i}", at=base + timedelta(seconds=i // 2))
    before = {f"{r}:{role}" for r in rids for role in ("user", "assistant")}
    added = []

    def arrive() -> None:
        rid = new_id("late")
        projection.prompt("alice", cid, rid, "late", at=datetime.now(UTC))
        added.append(rid)

    seen = await walk(
        client, f"/v1/conversations/{cid}/messages", users.headers("alice"), 4, arrive
    )
    assert len(seen) == len(set(seen)) == len(before)
    assert set(seen) == before
    assert added  # new messages arrived during the walk, and none leaked into it
    # newest first
    full = await walk(client, f"/v1/conversations/{cid}/messages", users.headers("alice"), 100)
    assert full[:2] == [f"{added[-1]}:assistant", f"{added[-1]}:user"]


async def test_conversations_are_the_callers_own(
    client: httpx.AsyncClient, users: Users, projection: Projection
) -> None:
    mine = [new_id("ca") for _ in range(5)]
    theirs = new_id("cb")
    for i, cid in enumerate(mine):
        projection.prompt(
            "alice",
            cid,
            new_id("r"),
            "hi",
            at=datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=i),
        )
    projection.prompt("bob", theirs, new_id("r"), "secret")
    seen = await walk(client, "/v1/conversations", users.headers("alice"), 2)
    assert [c for c in seen if c in mine] == list(reversed(mine))
    assert theirs not in seen
    for path in (f"/v1/conversations/{theirs}", f"/v1/conversations/{theirs}/messages"):
        r = await client.get(path, headers=users.headers("alice"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get(f"/v1/conversations/{mine[0]}", headers=users.headers("alice"))
    assert r.status_code == 200 and r.json()["id"] == mine[0]


async def test_auth_and_bad_cursors(client: httpx.AsyncClient, users: Users) -> None:
    r = await client.get("/v1/conversations")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = await client.get("/v1/conversations", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = await client.get(
        "/v1/conversations", params={"cursor": "garbage"}, headers=users.headers("alice")
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "cursor"


async def test_completion_state_and_models(
    client: httpx.AsyncClient, users: Users, projection: Projection
) -> None:
    cid, rid = new_id("c"), new_id("r")
    projection.prompt("alice", cid, rid, "hello", model="m-default")
    projection.chunks(rid, 1, ["Hel", "lo"])
    body = (await client.get(f"/v1/chat/completions/{rid}", headers=users.headers("alice"))).json()
    assert (body["status"], body["text"], body["attempt"]) == ("streaming", "Hello", 1)
    projection.finish(rid, 1)
    body = (await client.get(f"/v1/chat/completions/{rid}", headers=users.headers("alice"))).json()
    assert body["status"] == "finished" and body["usage"]["completion_tokens"] == 5
    assert body["timings"]["ttft_ms"] == 12.5 and body["timings"]["finished_at"]
    r = await client.get(f"/v1/chat/completions/{rid}", headers=users.headers("bob"))
    assert r.status_code == 404
    models = (await client.get("/v1/models", headers=users.headers("bob"))).json()
    assert [m["id"] for m in models["data"]] == ["m-default", "m-other"]


async def test_ops_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).json()["status"] == "ready"
    text = (await client.get("/metrics")).text
    assert "chatlog_query_subscribers" in text and "chatlog_query_hub_consumer_lag" in text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions/r%00x",
        "/v1/chat/completions/r%00x/stream",
        "/v1/conversations/c%00x",
        "/v1/conversations/c%00x/messages",
    ],
)
async def test_a_nul_in_a_path_id_is_a_404_on_a_kept_connection(
    infra_settings: InfraSettings, users: Users, path: str
) -> None:
    # owner_wait_s short: the stream route waits that long for an unknown request's owner
    settings = query_settings(infra_settings, owner_wait_s=0.2)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.get(path, headers=users.headers("alice"))
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
        assert r.headers.get("connection") != "close"
        # the same connection serves the next request
        assert (await c.get("/healthz")).status_code == 200


async def test_messages_are_the_current_branch_with_siblings_and_tree_has_every_branch(
    client: httpx.AsyncClient, users: Users, projection: Projection
) -> None:
    cid, r1, r2, r3 = new_id("conv"), new_id("r1"), new_id("r2"), new_id("r3")
    base = datetime(2026, 3, 1, tzinfo=UTC)
    projection.prompt("alice", cid, r1, "Capital of France?", at=base)
    projection.prompt("alice", cid, r2, "Of Italy?", at=base + timedelta(seconds=1))
    # back to r1 (a BranchSwitched, as the fold writes it), then an edit of "Of Italy?"
    projection.conn.execute(
        "UPDATE chatlog.conversations SET current_request_id = %s WHERE id = %s", (r1, cid)
    )
    projection.prompt("alice", cid, r3, "Of Spain?", at=base + timedelta(seconds=2))
    url = f"/v1/conversations/{cid}"

    page = (await client.get(f"{url}/messages", headers=users.headers("alice"))).json()
    got = [(m["id"], m["sibling_index"], m["sibling_count"]) for m in page["data"]]
    assert got == [(f"{r3}:assistant", 0, 1), (f"{r3}:user", 1, 2),
                   (f"{r1}:assistant", 0, 1), (f"{r1}:user", 0, 1)]  # fmt: skip
    assert page["data"][1]["sibling_request_ids"] == [r2, r3]
    assert page["data"][1]["parent_request_id"] == r1
    assert await walk(client, f"{url}/messages", users.headers("alice"), 1) == [
        m["id"] for m in page["data"]
    ]

    tree = (await client.get(f"{url}/tree", headers=users.headers("alice"))).json()
    assert tree["object"] == "conversation.tree" and tree["current_request_id"] == r3
    assert {m["request_id"] for m in tree["data"]} == {r1, r2, r3}
    for path in (f"{url}/tree", f"{url}/messages"):
        resp = await client.get(path, headers=users.headers("bob"))
        assert resp.status_code == 404 and resp.json()["error"]["param"] == "conversation_id"
