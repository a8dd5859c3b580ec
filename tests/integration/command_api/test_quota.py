"""Daily token quotas: past `token_quota_per_day` (as the usage meter counted) a prompt gets
OpenAI's 429 `insufficient_quota`, with Retry-After at the next UTC day's start."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from command_api.quota import next_day_s
from infra.clients import pg_connect
from tests.integration.command_api.conftest import command_settings, prompt, running_client

pytestmark = pytest.mark.integration


def metered(settings, user: str, day: date, prompt_tokens: int, completion_tokens: int) -> None:  # type: ignore[no-untyped-def]
    """A row as the usage projection writes it for one finished request."""
    with pg_connect(settings) as conn:
        conn.execute(
            "INSERT INTO chatlog.usage_requests (request_id, user_id, model, day, attempt,"
            " outcome, prompt_tokens, completion_tokens) VALUES (%s, %s, 'm', %s, 1,"
            " 'finished', %s, %s)",
            (f"r-{uuid.uuid4().hex[:10]}", user, day, prompt_tokens, completion_tokens),
        )
        conn.commit()


async def test_a_user_past_the_quota_gets_insufficient_quota(infra_settings, new_user) -> None:  # type: ignore[no-untyped-def]
    settings = command_settings(infra_settings, token_quota_per_day=10)
    spent, spent_headers = new_user()
    under, under_headers = new_user()
    today = datetime.now(UTC).date()
    metered(settings, spent, today, 6, 4)  # 10 of 10
    metered(settings, under, today, 3, 3)
    metered(settings, under, today - timedelta(days=1), 50, 50)  # yesterday's: not today's
    async with running_client(settings) as client:
        r = await client.post("/v1/chat/completions", json=prompt(), headers=spent_headers)
        assert r.status_code == 429, r.text
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
        midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC)
        assert (
            0 < int(r.headers["retry-after"]) <= (midnight - datetime.now(UTC)).total_seconds() + 2
        )
        ok = await client.post("/v1/chat/completions", json=prompt(), headers=under_headers)
        assert ok.status_code == 202, ok.text
        # the other ways to start a generation spend the same quota
        turn = f"/v1/conversations/{ok.json()['conversation_id']}/messages/{ok.json()['id']}"
        metered(settings, under, today, 2, 2)  # now 10 of 10
        for path, payload in (
            ("/v1/responses", {"model": prompt()["model"], "input": "more"}),
            (f"{turn}/regenerate", {}),
        ):
            refused = await client.post(path, json=payload, headers=under_headers)
            assert refused.status_code == 429, (path, refused.text)
            assert refused.json()["error"]["code"] == "insufficient_quota"


async def test_a_retry_of_an_accepted_prompt_is_answered_past_the_quota(infra_settings, new_user) -> None:  # type: ignore[no-untyped-def]
    """The prompt was accepted before the quota ran out: its retry (same Idempotency-Key)
    must learn that request's id, not a 429 that makes the client give up on it."""
    settings = command_settings(infra_settings, token_quota_per_day=10)
    user, headers = new_user()
    keyed = {**headers, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    async with running_client(settings) as client:
        first = await client.post("/v1/chat/completions", json=prompt(), headers=keyed)
        assert first.status_code == 202, first.text
        metered(settings, user, datetime.now(UTC).date(), 6, 4)  # its answer spent the quota
        again = await client.post("/v1/chat/completions", json=prompt(), headers=keyed)
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        new = await client.post("/v1/chat/completions", json=prompt(), headers=headers)
        assert new.status_code == 429, new.text


async def test_quotas_are_off_by_default(infra_settings, new_user) -> None:  # type: ignore[no-untyped-def]
    settings = command_settings(infra_settings)
    user, headers = new_user()
    metered(settings, user, datetime.now(UTC).date(), 10**6, 10**6)
    async with running_client(settings) as client:
        r = await client.post("/v1/chat/completions", json=prompt(), headers=headers)
        assert r.status_code == 202, r.text


def test_the_quota_resets_at_the_next_utc_midnight() -> None:
    assert next_day_s(datetime(2026, 3, 1, 23, 59, 30, tzinfo=UTC)) == 30
    assert next_day_s(datetime(2026, 3, 1, 0, 0, tzinfo=UTC)) == 86_400
