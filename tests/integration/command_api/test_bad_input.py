"""Input no projection could store (a lone surrogate, U+0000) and ids no id can be: a 400
(or 404) in the OpenAI shape, never a 500, and the keep-alive connection goes on serving.

Through a real HTTP server (uvicorn), so a dropped connection would show: every request
of a test goes over one connection, whose local port must not change.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from command_api import CommandSettings, create_app
from tests.integration.command_api.conftest import prompt
from tests.integration.command_api.fake_query_api import serve

pytestmark = pytest.mark.integration

SURROGATE, NUL = json.dumps("\ud800")[1:-1], json.dumps("\x00")[1:-1]  # JSON escapes


@pytest.fixture(scope="module")
async def http(settings: CommandSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(create_app(settings)) as url,
        httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1)) as c,
    ):
        yield c


def local_port(resp: httpx.Response) -> Any:
    return resp.extensions["network_stream"].get_extra_info("client_addr")[1]


def with_escape(body: dict[str, Any], escape: str) -> bytes:
    """The body as JSON, each `{}` replaced by the raw JSON escape (json.dumps would not)."""
    return json.dumps(body).replace("{}", escape).encode()


def assert_openai_error(resp: httpx.Response, status: int, param: str) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"] and error["type"], error


async def accepted(http: httpx.AsyncClient, auth: dict[str, str]) -> httpx.Response:
    resp = await http.post("/v1/chat/completions", json=prompt(), headers=auth)
    assert resp.status_code == 202, resp.text
    return resp


BODIES = [
    (
        {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "a{}"}]},
        "messages.0.content",
    ),
    (
        {
            "model": "SmolLM2-135M-Instruct",
            "messages": [{"role": "system", "content": "s{}"}, {"role": "user", "content": "u"}],
        },
        "messages.0.content",
    ),
    (
        {
            "model": "SmolLM2-135M-Instruct",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "p{}"}]}],
        },
        "messages.0.content.0.text",
    ),
    ({**prompt(), "stop": "s{}"}, "stop"),
    ({**prompt(), "stop": ["ok", "s{}"]}, "stop.1"),
    ({**prompt(), "model": "SmolLM2-135M-Instruct{}"}, "model"),
    ({**prompt(), "user": "u{}"}, "user"),
    ({**prompt(), "conversation_id": "conv-{}"}, "conversation_id"),
]


@pytest.mark.parametrize("escape", [SURROGATE, NUL], ids=["surrogate", "nul"])
@pytest.mark.parametrize(("body", "param"), BODIES, ids=[p for _, p in BODIES])
async def test_unstorable_text_in_a_prompt_is_a_400_and_the_connection_survives(
    http, new_user, body, param, escape
):
    _, auth = new_user()
    first = await accepted(http, auth)
    resp = await http.post(
        "/v1/chat/completions",
        content=with_escape(body, escape),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert_openai_error(resp, 400, param)
    assert local_port(await accepted(http, auth)) == local_port(first)


@pytest.mark.parametrize("escape", [SURROGATE, NUL], ids=["surrogate", "nul"])
async def test_unstorable_title_is_a_400(http, new_user, escape):
    _, auth = new_user()
    conv = (await accepted(http, auth)).json()["conversation_id"]
    resp = await http.patch(
        f"/v1/conversations/{conv}",
        content=with_escape({"title": "t{}"}, escape),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] in ("title", "body")  # FastAPI's own JSON check: body


@pytest.mark.parametrize(
    ("method", "path", "param"),
    [
        ("POST", "/v1/chat/completions/chatcmpl-%00/cancel", "request_id"),
        ("PATCH", "/v1/conversations/conv-%00", "conversation_id"),
        ("DELETE", "/v1/conversations/conv-%00", "conversation_id"),
        ("DELETE", "/v1/conversations/conv-%ED%A0%80", "conversation_id"),
    ],
)
async def test_a_nul_in_a_path_id_is_a_404_and_the_connection_survives(
    http, new_user, method, path, param
):
    _, auth = new_user()
    first = await accepted(http, auth)
    body = {"title": "a title"} if method == "PATCH" else None
    resp = await http.request(method, path, json=body, headers=auth)
    assert_openai_error(resp, 404, param)
    assert local_port(await accepted(http, auth)) == local_port(first)


async def test_the_fastapi_route_refuses_the_same(settings, new_user):
    """Under a root path the direct accept route steps aside: FastAPI's route answers."""
    _, auth = new_user()
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, root_path="/api"), base_url="http://c/api"
        ) as client,
    ):
        body = with_escape({**prompt(), "model": "SmolLM2-135M-Instruct{}"}, SURROGATE)
        resp = await client.post(
            "/v1/chat/completions",
            content=body,
            headers={**auth, "Content-Type": "application/json"},
        )
        assert_openai_error(resp, 400, "model")
