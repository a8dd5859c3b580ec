"""Accepting prompts on the real broker and database: the event, its context, idempotency."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from command_api.prompts import PromptService, canonical_hash
from command_api.store import CommandStore
from infra.clients import pg_connect
from schemas import PromptSubmitted
from tests.integration.command_api.conftest import (
    command_settings,
    events_about,
    project_turn,
    prompt,
    running_app,
)

pytestmark = pytest.mark.integration
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_accepted_prompt_is_in_the_topic_with_key_headers_and_context(
    client, settings, new_user
):
    user, auth = new_user()
    body = prompt(
        "Why is the sky blue?",
        temperature=0.5,
        max_tokens=32,
        stop=["\n\n"],
        seed=7,
    )
    body["messages"].insert(0, {"role": "system", "content": "Be brief."})
    resp = await client.post(
        "/v1/chat/completions", json=body, headers={**auth, "traceparent": TRACE}
    )
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert out["object"] == "chat.completion.request" and out["status"] == "queued"
    assert out["stream_url"] == f"/v1/chat/completions/{out['id']}/stream"
    assert resp.headers["x-ratelimit-limit-requests"] == "60"
    assert resp.headers["x-ratelimit-remaining-requests"] == "59"

    records = await events_about(settings, out["id"])
    assert len(records) == 1
    key, event = records[0]
    assert isinstance(event, PromptSubmitted)
    assert key == out["conversation_id"].encode() == event.key.encode()
    assert event.user_id == user and event.traceparent == TRACE
    assert [(m.role, m.content) for m in event.messages] == [
        ("system", "Be brief."),
        ("user", "Why is the sky blue?"),
    ]
    assert event.params.max_tokens == 32 and event.params.temperature == 0.5
    assert event.params.stop == ("\n\n",) and event.params.seed == 7


async def test_continuation_carries_the_full_context_from_the_read_model(
    client, settings, new_user
):
    user, auth = new_user()
    first = (
        await client.post("/v1/chat/completions", json=prompt("Hi, I am Ada."), headers=auth)
    ).json()
    conv = first["conversation_id"]
    project_turn(
        settings,
        request_id=first["id"],
        conversation_id=conv,
        user_id=user,
        prompt_text="Hi, I am Ada.",
        answer="Hello Ada!",
    )
    resp = await client.post(
        "/v1/chat/completions",
        json=prompt("What is my name?", conversation_id=conv),
        headers=auth,
    )
    assert resp.status_code == 202, resp.text
    second = resp.json()
    assert second["conversation_id"] == conv
    [(_, event)] = await events_about(settings, second["id"])
    assert isinstance(event, PromptSubmitted)
    assert [(m.role, m.content) for m in event.messages] == [
        ("user", "Hi, I am Ada."),
        ("assistant", "Hello Ada!"),
        ("user", "What is my name?"),
    ]
    assert event.parent_request_id == first["id"]


async def test_continuation_waits_then_answers_409_while_the_last_turn_runs(client, new_user):
    _, auth = new_user()
    first = (await client.post("/v1/chat/completions", json=prompt(), headers=auth)).json()
    resp = await client.post(
        "/v1/chat/completions",
        json=prompt("more", conversation_id=first["conversation_id"]),
        headers=auth,
    )
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "conversation_busy"


async def test_idempotent_retry_yields_one_event_and_the_same_response(client, settings, new_user):
    user, auth = new_user()
    headers = {**auth, "Idempotency-Key": "retry-1"}
    body = prompt("once only")
    a = await client.post("/v1/chat/completions", json=body, headers=headers)
    b = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert a.status_code == b.status_code == 202
    assert a.json() == b.json()
    assert b.headers["idempotent-replayed"] == "true"
    records = await events_about(settings, user)
    assert [e.request_id for _, e in records] == [a.json()["id"]]  # type: ignore[attr-defined]
    assert records[0][1].idempotency_key == "retry-1"  # type: ignore[attr-defined]

    c = await client.post("/v1/chat/completions", json=prompt("another body"), headers=headers)
    assert c.status_code == 422
    assert c.json()["error"]["code"] == "idempotency_key_reused"
    _, other_auth = new_user()  # keys are per user: another user's same key is unrelated
    d = await client.post(
        "/v1/chat/completions", json=body, headers={**other_auth, "Idempotency-Key": "retry-1"}
    )
    assert d.status_code == 202 and d.json()["id"] != a.json()["id"]


async def test_61st_prompt_in_a_minute_is_refused_with_headers(client, new_user):
    _, auth = new_user()
    for i in range(60):
        resp = await client.post("/v1/chat/completions", json=prompt(f"n{i}"), headers=auth)
        assert resp.status_code == 202, resp.text
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    refused = await client.post("/v1/chat/completions", json=prompt("61"), headers=auth)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "60"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 55 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")


async def test_bad_input_is_refused_in_the_openai_shape(client, settings, new_user):
    _, auth = new_user()
    cases = [
        ({**prompt(), "model": "gpt-9"}, 400, "model"),
        ({**prompt(), "messages": []}, 400, "messages"),
        ({**prompt(), "messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role"),
        ({**prompt(), "temperature": 3}, 400, "temperature"),
        ({**prompt(), "n": 2}, 400, "n"),
    ]
    for body, status, param in cases:
        resp = await client.post("/v1/chat/completions", json=body, headers=auth)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]["param"] == param
    huge = prompt("x" * (settings.max_body_bytes + 1))
    resp = await client.post("/v1/chat/completions", json=huge, headers=auth)
    assert resp.status_code == 413
    assert resp.json()["error"]["type"] == "invalid_request_error"
    resp = await client.post("/v1/chat/completions", json=prompt(), headers={})
    assert resp.status_code == 401
    resp = await client.post(
        "/v1/chat/completions", json=prompt(), headers={"Authorization": "Bearer cl-nope"}
    )
    assert resp.status_code == 401


async def test_health_readiness_and_metrics(client):
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    body = ready.json()
    models = body.pop("models")
    assert ready.status_code == 200 and body == {"status": "ready", "postgres": True, "kafka": True}
    # no replica ever beat here: each model is not judged, its breaker closed (#14)
    assert {m["breaker"] for m in models.values()} == {"closed"}
    assert {m["live_replicas"] for m in models.values()} == {None}
    text = (await client.get("/metrics")).text
    assert "chatlog_command_requests_total" in text
    assert 'chatlog_command_rejections_total{reason="rate_limit_exceeded"}' in text
    assert "chatlog_command_request_seconds_bucket" in text


async def test_branching_from_a_parent_request_cuts_the_history_there(client, settings, new_user):
    user, auth = new_user()
    first = (await client.post("/v1/chat/completions", json=prompt("one"), headers=auth)).json()
    conv = first["conversation_id"]
    project_turn(
        settings,
        request_id=first["id"],
        conversation_id=conv,
        user_id=user,
        prompt_text="one",
        answer="1",
    )
    second = (
        await client.post(
            "/v1/chat/completions", json=prompt("two", conversation_id=conv), headers=auth
        )
    ).json()
    project_turn(
        settings,
        request_id=second["id"],
        conversation_id=conv,
        user_id=user,
        prompt_text="two",
        answer="2",
    )
    branch = await client.post(
        "/v1/chat/completions",
        json=prompt("two, again", conversation_id=conv, parent_request_id=first["id"]),
        headers=auth,
    )
    assert branch.status_code == 202, branch.text
    [(_, event)] = await events_about(settings, branch.json()["id"])
    assert [m.content for m in event.messages] == ["one", "1", "two, again"]  # type: ignore[attr-defined]
    assert event.parent_request_id == first["id"]  # type: ignore[attr-defined]

    other = (await client.post("/v1/chat/completions", json=prompt(), headers=auth)).json()
    foreign_parent = await client.post(
        "/v1/chat/completions",
        json=prompt("x", conversation_id=conv, parent_request_id=other["id"]),
        headers=auth,
    )
    assert foreign_parent.status_code == 404
    assert foreign_parent.json()["error"]["param"] == "parent_request_id"


async def test_a_key_whose_first_request_is_still_running_answers_409(client, settings, new_user):
    user, auth = new_user()
    body = prompt("slow")
    raw = json.dumps(body).encode()

    async with AsyncConnectionPool(settings.postgres_url, min_size=1, max_size=1) as pool:
        claimed = await CommandStore(pool, settings).claim_key(
            user, "k-busy", canonical_hash(raw), "chatcmpl-elsewhere"
        )
    assert claimed is None  # another process holds the key, mid-request
    resp = await client.post(
        "/v1/chat/completions", json=body, headers={**auth, "Idempotency-Key": "k-busy"}
    )
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "idempotency_key_in_progress"
    assert resp.headers["retry-after"] == "1"


class CompleteFailsOnce(CommandStore):
    """The real store, except that marking a key done fails once: Postgres lost between
    Kafka's ack and `complete_key` (what a crash there leaves behind, too)."""

    failed = False

    async def complete_key(self, user_id: str, key: str, response: dict[str, Any]) -> None:
        if not self.failed:
            self.failed = True
            raise psycopg.OperationalError("simulated: the connection broke")
        await super().complete_key(user_id, key, response)


async def test_a_failure_between_the_ack_and_completing_the_key_never_appends_twice(
    infra_settings, new_user
):
    settings = command_settings(infra_settings, idempotency_pending_s=0.5)
    user, auth = new_user()
    headers = {**auth, "Idempotency-Key": "ack-then-fail"}
    body = prompt("exactly once")
    async with running_app(settings) as (app, client):
        ctx = app.state.ctx
        store = CompleteFailsOnce(ctx.pool, settings)
        ctx.prompts = PromptService(settings, store, ctx.read_model, ctx.log, ctx.metrics)
        first = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert store.failed
        await asyncio.sleep(1.0)  # past the pending window: the key is reclaimable by age
        retry = await client.post("/v1/chat/completions", json=body, headers=headers)
    submitted = [e for _, e in await events_about(settings, user) if isinstance(e, PromptSubmitted)]
    # One prompt: the retry may append its event again (it cannot tell whether the first
    # append landed), the same event with the same id, which consumers fold once.
    assert {(e.event_id, e.request_id) for e in submitted} == {
        (submitted[0].event_id, first.json()["id"])
    }, [e.request_id for e in submitted]
    assert first.status_code == 202, first.text  # it WAS accepted: the client is told so
    assert retry.status_code == 202, retry.text
    assert retry.json()["id"] == first.json()["id"] == submitted[0].request_id
    assert retry.headers["idempotent-replayed"] == "true"


class ProcessDied(BaseException):
    """What a SIGKILL leaves behind: nothing after this point of the process runs."""


class StoreOfADyingProcess(CommandStore):
    """The real store, except that the clean-ups a killed process never reaches do not run."""

    async def revoke(self, **_: Any) -> None:
        return None

    async def release_key(self, user_id: str, key: str, request_id: str) -> None:
        return None


class KilledBeforeTheAck:
    """An event log whose process dies while the append is in flight, before Kafka's ack."""

    ready = True

    async def append(self, event: Any) -> None:
        raise ProcessDied


async def test_a_process_killed_before_the_ack_leaves_a_key_whose_retry_sends_the_prompt(
    infra_settings, new_user
):
    """Admitted, then killed before Kafka acked: the retry answers that request AND puts its
    event in the log (before, it answered 202 for a prompt that was never sent)."""
    settings = command_settings(infra_settings, idempotency_pending_s=0.5)
    user, auth = new_user()
    headers = {**auth, "Idempotency-Key": "killed-before-ack"}
    body = prompt("sent in the end")
    async with running_app(settings) as (app, client):
        ctx = app.state.ctx
        normal = ctx.prompts
        ctx.prompts = PromptService(
            settings, StoreOfADyingProcess(ctx.pool, settings), ctx.read_model,
            KilledBeforeTheAck(), ctx.metrics,
        )  # fmt: skip
        with pytest.raises(BaseException) as died:
            await client.post("/v1/chat/completions", json=body, headers=headers)
        assert died.group_contains(ProcessDied) if isinstance(died.value, BaseExceptionGroup) \
            else isinstance(died.value, ProcessDied)  # fmt: skip
        assert not [e for _, e in await events_about(settings, user)]  # nothing was sent
        ctx.prompts = normal  # the retry reaches a healthy process
        await asyncio.sleep(1.0)  # past the pending window: the key is stale
        retry = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert retry.status_code == 202, retry.text
    submitted = [e for _, e in await events_about(settings, user) if isinstance(e, PromptSubmitted)]
    assert [e.request_id for e in submitted] == [retry.json()["id"]]
    assert submitted[0].messages[-1].content == "sent in the end"
    assert retry.headers["idempotent-replayed"] == "true"


async def test_a_stale_key_whose_request_was_never_admitted_is_reclaimed(
    client, settings, new_user
):
    """A process that died before admission left only the key: the retry goes through."""
    user, auth = new_user()
    body = prompt("reclaimed")
    digest = canonical_hash(json.dumps(body).encode())
    with pg_connect(settings) as conn:
        conn.execute(
            "INSERT INTO command.idempotency_keys (user_id, key, body_hash, request_id, state,"
            " created_at) VALUES (%s, 'k-dead', %s, 'chatcmpl-dead', 'pending',"
            " now() - interval '1 hour')",
            (user, digest),
        )
    resp = await client.post(
        "/v1/chat/completions", json=body, headers={**auth, "Idempotency-Key": "k-dead"}
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["id"] != "chatcmpl-dead"
    submitted = [e for _, e in await events_about(settings, user) if isinstance(e, PromptSubmitted)]
    assert [e.request_id for e in submitted] == [resp.json()["id"]]


async def test_a_nul_in_the_idempotency_key_is_a_400_naming_the_header(client, new_user):
    _, auth = new_user()
    resp = await client.post(
        "/v1/chat/completions", json=prompt(), headers={**auth, "Idempotency-Key": b"k\x00"}
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "Idempotency-Key"
