"""Cancel, rename, delete; ownership; the concurrency cap; Kafka down -> 503, no event."""

from __future__ import annotations

import asyncio
import time

import pytest

from schemas import CancelRequested, ConversationDeleted, ConversationRenamed
from tests.integration.command_api.conftest import (
    command_settings,
    events_about,
    prompt,
    running_client,
    set_completion,
)

pytestmark = pytest.mark.integration


async def test_cancel_is_idempotent_and_answers_state_after_completion(client, settings, new_user):
    user, auth = new_user()
    req = (await client.post("/v1/chat/completions", json=prompt(), headers=auth)).json()
    url = f"/v1/chat/completions/{req['id']}/cancel"
    first = await client.post(url, headers=auth)
    assert first.status_code == 202 and first.json()["cancel_requested"] is True
    second = await client.post(url, headers=auth)
    assert second.status_code == 200 and second.json()["status"] == "queued"
    cancels = [
        e for _, e in await events_about(settings, req["id"]) if isinstance(e, CancelRequested)
    ]
    assert len(cancels) == 1 and cancels[0].key == req["conversation_id"]

    done = (await client.post("/v1/chat/completions", json=prompt(), headers=auth)).json()
    set_completion(settings, done["id"], done["conversation_id"], user, "finished")
    after = await client.post(f"/v1/chat/completions/{done['id']}/cancel", headers=auth)
    assert after.status_code == 200 and after.json()["status"] == "finished"
    assert not [
        e for _, e in await events_about(settings, done["id"]) if isinstance(e, CancelRequested)
    ]


async def test_rename_and_delete_append_events_and_delete_is_final(client, settings, new_user):
    user, auth = new_user()
    conv = (await client.post("/v1/chat/completions", json=prompt(), headers=auth)).json()[
        "conversation_id"
    ]
    renamed = await client.patch(
        f"/v1/conversations/{conv}", json={"title": "  Sky   colour "}, headers=auth
    )
    assert renamed.status_code == 200 and renamed.json()["title"] == "Sky colour"
    bad = await client.patch(f"/v1/conversations/{conv}", json={"title": ""}, headers=auth)
    assert bad.status_code == 400
    deleted = await client.delete(f"/v1/conversations/{conv}", headers=auth)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    events = [e for _, e in await events_about(settings, conv)]
    assert [type(e) for e in events][1:] == [ConversationRenamed, ConversationDeleted]
    assert events[1].title == "Sky colour" and events[2].user_id == user  # type: ignore[attr-defined]
    again = await client.post(
        "/v1/chat/completions", json=prompt(conversation_id=conv), headers=auth
    )
    assert again.status_code == 404
    assert (await client.delete(f"/v1/conversations/{conv}", headers=auth)).status_code == 404


async def test_users_cannot_touch_each_others_conversations(client, settings, new_user):
    _, alice = new_user()
    mallory_id, mallory = new_user()
    req = (await client.post("/v1/chat/completions", json=prompt(), headers=alice)).json()
    conv = req["conversation_id"]
    attempts = [
        client.post("/v1/chat/completions", json=prompt(conversation_id=conv), headers=mallory),
        client.post(f"/v1/chat/completions/{req['id']}/cancel", headers=mallory),
        client.patch(f"/v1/conversations/{conv}", json={"title": "mine"}, headers=mallory),
        client.delete(f"/v1/conversations/{conv}", headers=mallory),
    ]
    for resp in await asyncio.gather(*attempts):
        assert resp.status_code == 404, resp.text
    assert not await events_about(settings, mallory_id)
    assert [type(e).__name__ for _, e in await events_about(settings, conv)] == ["PromptSubmitted"]


async def test_concurrency_cap_counts_unfinished_generations(infra_settings, new_user):
    capped = command_settings(infra_settings, max_concurrent_generations=2)
    user, auth = new_user()
    async with running_client(capped) as client:
        accepted = []
        for _ in range(2):
            resp = await client.post("/v1/chat/completions", json=prompt(), headers=auth)
            assert resp.status_code == 202
            accepted.append(resp.json())
        refused = await client.post("/v1/chat/completions", json=prompt(), headers=auth)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_concurrent_generations"
        assert refused.headers["retry-after"] == "1"
        first = accepted[0]
        set_completion(capped, first["id"], first["conversation_id"], user, "cancelled")
        resp = await client.post("/v1/chat/completions", json=prompt(), headers=auth)
        assert resp.status_code == 202


async def test_a_stopped_projection_never_locks_a_user_out(infra_settings, new_user):
    """No processors run here: the read model never shows a prompt terminal. Each prompt's
    slot lapses with its lease, so prompts spaced over the lease go on being accepted, and
    a burst beyond the cap is still refused."""
    capped = command_settings(infra_settings, max_concurrent_generations=2, generation_lease_s=2.0)
    _, auth = new_user()
    _, other_auth = new_user()
    async with running_client(capped) as client:
        statuses = []
        for _ in range(3):  # 9 prompts over three leases, three times the cap
            for _ in range(3):
                resp = await client.post("/v1/chat/completions", json=prompt(), headers=auth)
                statuses.append(resp.status_code)
            await asyncio.sleep(2.5)
        assert statuses == [202, 202, 429] * 3
        # Two users at once (the batched admission path): their lapsed slots are free too.
        for headers in (auth, other_auth):
            for _ in range(2):
                resp = await client.post("/v1/chat/completions", json=prompt(), headers=headers)
                assert resp.status_code == 202
        await asyncio.sleep(2.5)
        both = await asyncio.gather(
            *(
                client.post("/v1/chat/completions", json=prompt(), headers=h)
                for h in (auth, other_auth, auth, other_auth, auth, other_auth)
            )
        )
        assert sorted(r.status_code for r in both) == [202] * 4 + [429] * 2


async def test_kafka_unreachable_answers_503_quickly_and_no_event_appears(
    infra_settings, settings, new_user
):
    dead = command_settings(
        infra_settings,
        kafka_bootstrap="127.0.0.1:1",
        require_kafka_at_startup=False,
        startup_timeout_s=0.5,
        kafka_send_timeout_s=1.0,
    )
    user, auth = new_user()
    async with running_client(dead) as client:
        started = time.monotonic()
        resp = await client.post("/v1/chat/completions", json=prompt(), headers=auth)
        assert resp.status_code == 503, resp.text
        assert time.monotonic() - started < dead.kafka_send_timeout_s + 0.5
        assert resp.json()["error"]["code"] == "event_log_unavailable"
        assert (await client.get("/readyz")).status_code == 503
    # The refused prompt cost nothing: the user's window is untouched.
    async with running_client(settings) as live:
        ok = await live.post("/v1/chat/completions", json=prompt(), headers=auth)
        assert ok.headers["x-ratelimit-remaining-requests"] == "59"
        await asyncio.sleep(1.0)
        assert [e.request_id for _, e in await events_about(settings, user)] == [  # type: ignore[attr-defined]
            ok.json()["id"]
        ]
