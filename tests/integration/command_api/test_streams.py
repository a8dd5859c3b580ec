"""The OpenAI behaviours (`stream: true|false`) relayed from a fake query API stream."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from command_api import create_app
from schemas import CancelRequested
from tests.integration.command_api.conftest import (
    command_settings,
    events_about,
    prompt,
    running_client,
)
from tests.integration.command_api.fake_query_api import (
    FakeQueryApi,
    chunk,
    done,
    error,
    reset,
    serve,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def fake():
    fake = FakeQueryApi()
    async with serve(fake.app()) as url:
        fake.url = url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture
def script(fake):
    fake.script, fake.drop_first_after, fake.hold_open = [], None, False
    fake.owner_auth = None
    fake.seen_auth.clear()
    fake.seen_last_ids.clear()
    fake.connections = 0
    fake.fail_with = None
    fake.closed.clear()
    return fake


@pytest.fixture(scope="module")
async def stream_client(infra_settings, fake):
    settings = command_settings(infra_settings, query_api_url=fake.url)
    async with running_client(settings) as client:
        yield client


def frames(text: str) -> list[str]:
    return [f[len("data: ") :] for f in text.split("\n\n") if f.startswith("data: ")]


async def test_stream_true_relays_openai_chunks_usage_and_done(stream_client, script, new_user):
    _, auth = new_user()
    script.owner_auth = auth["Authorization"]
    script.script = [chunk(1, 0, "Hel"), chunk(1, 1, "lo"), done(1)]
    body = prompt(stream=True, stream_options={"include_usage": True})
    resp = await stream_client.post("/v1/chat/completions", json=body, headers=auth)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-ratelimit-limit-requests"] == "60"
    data = frames(resp.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    rid = resp.headers["x-request-id"]
    assert {c["id"] for c in chunks} == {rid}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Hel", "lo"]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert set(script.seen_auth) == {auth["Authorization"]}


async def test_resumes_with_last_event_id_when_the_link_drops(stream_client, script, new_user):
    _, auth = new_user()
    script.script = [chunk(1, 0, "a"), chunk(1, 1, "b"), chunk(1, 2, "c"), done(1)]
    script.drop_first_after = 2
    resp = await stream_client.post("/v1/chat/completions", json=prompt(stream=False), headers=auth)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "abc"
    assert script.seen_last_ids == [None, "1:1"]


async def test_reset_before_any_text_is_invisible(stream_client, script, new_user):
    _, auth = new_user()
    script.script = [reset(2), chunk(2, 0, "fresh"), done(2)]
    resp = await stream_client.post("/v1/chat/completions", json=prompt(stream=True), headers=auth)
    data = frames(resp.text)
    assert data[-1] == "[DONE]"
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[1:-1]]
    assert contents == ["fresh", None]


async def test_reset_after_text_ends_the_stream_with_an_error_naming_the_stream_url(
    stream_client, script, new_user
):
    _, auth = new_user()
    script.script = [chunk(1, 0, "old"), reset(2), chunk(2, 0, "new"), done(2)]
    resp = await stream_client.post("/v1/chat/completions", json=prompt(stream=True), headers=auth)
    data = frames(resp.text)
    assert "[DONE]" not in data
    last = json.loads(data[-1])
    assert last["error"]["code"] == "stream_reset"
    assert f"/v1/chat/completions/{resp.headers['x-request-id']}/stream" in last["error"]["message"]


async def test_stream_false_starts_over_on_reset_and_fails_on_error(
    stream_client, script, new_user
):
    _, auth = new_user()
    script.script = [chunk(1, 0, "old"), reset(2), chunk(2, 0, "new"), done(2, "length")]
    resp = await stream_client.post("/v1/chat/completions", json=prompt(stream=False), headers=auth)
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "new"
    assert body["choices"][0]["finish_reason"] == "length"
    script.script = [chunk(1, 0, "x"), error("engine_error", "the engine fell over")]
    failed = await stream_client.post(
        "/v1/chat/completions", json=prompt(stream=False), headers=auth
    )
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "engine_error"


async def test_official_openai_client_streams_and_gets_objects(
    infra_settings, fake, script, new_user
):
    _, auth = new_user()
    script.script = [chunk(1, 0, "Hi"), chunk(1, 1, " there"), done(1)]
    app = create_app(command_settings(infra_settings, query_api_url=fake.url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http,
    ):
        client = openai.AsyncOpenAI(
            base_url="http://command/v1",
            api_key=auth["Authorization"].removeprefix("Bearer "),
            http_client=http,  # type: ignore[arg-type]  # openai types it as its httpx2
        )
        stream = await client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        async for part in stream:
            if part.choices and part.choices[0].delta.content:
                pieces.append(part.choices[0].delta.content)
            usage = part.usage or usage
        assert "".join(pieces) == "Hi there"
        assert usage is not None and usage.total_tokens == 8
        result = await client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "hello"}],
            stream=False,
        )
        assert result.choices[0].message.content == "Hi there"
        assert result.choices[0].finish_reason == "stop"
        assert result.usage is not None and result.usage.completion_tokens == 3


async def test_client_disconnect_does_not_cancel_the_generation(
    infra_settings, fake, script, new_user
):
    _, auth = new_user()
    script.script = [chunk(1, 0, "streaming")]
    script.hold_open = True
    settings = command_settings(infra_settings, query_api_url=fake.url)
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as http:
        async with http.stream(
            "POST", "/v1/chat/completions", json=prompt(stream=True), headers=auth
        ) as resp:
            rid = resp.headers["x-request-id"]
            async for line in resp.aiter_lines():
                if '"streaming"' in line:
                    break  # the client goes away mid-generation
        await asyncio.wait_for(script.closed.wait(), 5)  # the relay let go of its upstream
    script.hold_open = False
    events = [e for _, e in await events_about(settings, rid)]
    assert [type(e).__name__ for e in events] == ["PromptSubmitted"]
    assert not any(isinstance(e, CancelRequested) for e in events)


async def test_unreachable_stream_source_still_names_the_accepted_request(infra_settings, new_user):
    _, auth = new_user()
    settings = command_settings(infra_settings, query_api_url="http://127.0.0.1:1")
    async with running_client(settings) as client:
        waited = await client.post("/v1/chat/completions", json=prompt(stream=False), headers=auth)
        assert waited.status_code == 503
        rid = waited.headers["x-request-id"]
        message = waited.json()["error"]["message"]
        assert f"{rid} was accepted" in message and f"/{rid}/stream" in message, message
        streamed = await client.post("/v1/chat/completions", json=prompt(stream=True), headers=auth)
        last = json.loads(frames(streamed.text)[-1])
        assert last["error"]["code"] == "stream_unavailable"
        assert "connection" not in last["error"]["message"].lower()  # httpx's text: the log's
        assert (
            f"/v1/chat/completions/{streamed.headers['x-request-id']}/stream"
            in (last["error"]["message"])
        )


async def test_an_upstream_error_body_is_logged_not_answered(
    stream_client, script, new_user, caplog
):
    _, auth = new_user()
    secret = 'psycopg.errors.DataError: invalid byte sequence near "users_pkey"'
    script.fail_with = (500, secret)
    waited = await stream_client.post(
        "/v1/chat/completions", json=prompt(stream=False), headers=auth
    )
    assert waited.status_code == 503
    rid = waited.headers["x-request-id"]
    message = waited.json()["error"]["message"]
    assert rid in message and "psycopg" not in message and "500" not in message, message
    streamed = await stream_client.post(
        "/v1/chat/completions", json=prompt(stream=True), headers=auth
    )
    assert "psycopg" not in streamed.text and streamed.headers["x-request-id"] in streamed.text
    logged = [r.getMessage() for r in caplog.records if rid in r.getMessage()]
    assert any(secret in line for line in logged), logged
