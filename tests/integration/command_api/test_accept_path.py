"""The accept path's shortcuts keep its guarantees: batched admissions apply the limits
exactly, an uncached key is resolved by admission itself (and refused with 401 first), and
pooled connections that Postgres dropped are replaced without failing a prompt."""

from __future__ import annotations

import asyncio
import collections

import psycopg
import pytest

from command_api.batching import Batcher
from infra.clients import pg_connect
from tests.integration.command_api.conftest import command_settings, prompt, running_client

pytestmark = pytest.mark.integration


async def test_concurrent_prompts_share_round_trips_and_the_limit_stays_exact(
    infra_settings, new_user
):
    settings = command_settings(
        infra_settings, rate_limit_per_min=10, max_concurrent_generations=100, admit_concurrency=1
    )
    async with running_client(settings) as client:
        store = client._transport.app.state.ctx.store  # type: ignore[attr-defined]
        sizes: list[int] = []
        run_batch = store._admissions._run_batch

        async def counting(items):
            sizes.append(len(items))
            return await run_batch(items)

        store._admissions._run_batch = counting
        _, alice = new_user()
        _, bob = new_user()
        bad = {"Authorization": "Bearer cl-not-a-key"}
        calls = [alice] * 25 + [bob] * 5 + [bad] * 3
        resps = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=prompt(f"n{i}"), headers=h)
                for i, h in enumerate(calls)
            )
        )
        by = collections.Counter(
            (h["Authorization"], r.status_code) for h, r in zip(calls, resps, strict=True)
        )
    assert max(sizes) > 1 and sum(sizes) == 33  # admission round trips were shared
    assert by[(alice["Authorization"], 202)] == 10
    assert by[(alice["Authorization"], 429)] == 15
    assert by[(bob["Authorization"], 202)] == 5
    assert by[(bad["Authorization"], 401)] == 3
    ids = {r.json()["id"] for r in resps if r.status_code == 202}
    assert len(ids) == 15


async def test_batcher_runs_alone_when_idle_batches_under_load_and_isolates_failures():
    seen: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        seen.append(items)
        await asyncio.sleep(0.01)
        if 13 in items:
            raise ValueError("thirteen")
        return [i * 2 for i in items]

    batcher: Batcher[int, int] = Batcher(run, max_batch=8, concurrency=1)
    assert await batcher.submit(1) == 2
    assert seen == [[1]]
    results = await asyncio.gather(
        *(batcher.submit(i) for i in range(10, 30)), return_exceptions=True
    )
    assert [r for r in results if isinstance(r, Exception)] == [results[3]]
    assert str(results[3]) == "thirteen"
    assert [r for r in results if not isinstance(r, Exception)] == [
        i * 2 for i in range(10, 30) if i != 13
    ]
    assert max(len(b) for b in seen) == 8  # shared round trips, bounded


async def test_batcher_never_strands_a_call_queued_as_its_flusher_finishes():
    async def run(items: list[int]) -> list[int]:
        return [i * 2 for i in items]  # no await: the flusher ends in the same step

    batcher: Batcher[int, int] = Batcher(run, concurrency=1)
    async with asyncio.timeout(5):
        for i in range(5):  # each call is queued right after the previous one is answered
            assert await batcher.submit(i) == i * 2


async def test_bad_key_is_401_before_body_errors_and_a_good_key_is_cached(client, new_user):
    bad = {"Authorization": "Bearer cl-not-a-key"}
    resp = await client.post("/v1/chat/completions", json={**prompt(), "n": 3}, headers=bad)
    assert resp.status_code == 401
    resp = await client.post(
        "/v1/chat/completions", json={**prompt(), "parent_request_id": "x"}, headers=bad
    )
    assert resp.status_code == 401
    _, auth = new_user()
    for _ in range(2):  # resolved by admission, then from the cache
        resp = await client.post("/v1/chat/completions", json=prompt(), headers=auth)
        assert resp.status_code == 202, resp.text


async def test_connections_postgres_dropped_are_replaced_without_failing_a_prompt(
    infra_settings, new_user
):
    settings = command_settings(infra_settings, pg_pool_min=4, max_concurrent_generations=100)
    async with running_client(settings) as client:
        _, auth = new_user()
        resp = await client.post("/v1/chat/completions", json=prompt(), headers=auth)
        assert resp.status_code == 202, resp.text
        dbname = psycopg.conninfo.conninfo_to_dict(settings.postgres_url)["dbname"]
        with pg_connect(infra_settings, autocommit=True) as conn:  # as a restart would
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        await asyncio.sleep(0.2)
        for i in range(6):
            resp = await client.post("/v1/chat/completions", json=prompt(f"{i}"), headers=auth)
            assert resp.status_code == 202, resp.text


async def test_the_direct_accept_route_keeps_metrics_errors_and_other_routes(client, new_user):
    _, auth = new_user()
    ok = await client.post("/v1/chat/completions", json=prompt(), headers=auth)
    assert ok.status_code == 202, ok.text
    bad = await client.post("/v1/chat/completions", json={"model": "x"}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    # Not the direct route: FastAPI's routing answers these as before.
    assert (await client.get("/v1/chat/completions", headers=auth)).status_code == 405
    slash = await client.post("/v1/chat/completions/", json=prompt(), headers=auth)
    assert slash.status_code in (307, 404)
    text = (await client.get("/metrics")).text
    labels = 'route="/v1/chat/completions",status="202"'
    assert any(labels in line for line in text.splitlines())
    assert 'chatlog_command_rejections_total{reason="invalid_value"}' in text
