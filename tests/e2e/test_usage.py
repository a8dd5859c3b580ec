"""Usage metering and quotas through the front door (issue #18), the system started once.

The processors run the usage meter next to the other projections; `GET /v1/usage` shows a
user the tokens of their own finished requests, and a user past
`CHATLOG_TOKEN_QUOTA_PER_DAY` gets OpenAI's 429 `insufficient_quota` until the next UTC day.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from infra.auth import apply_auth_ddl, create_key
from infra.clients import pg_connect
from infra.settings import InfraSettings
from infra.system import System
from tests.e2e.conftest import SCRIPTED_MODEL, running_system
from tests.e2e.sse import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUOTA = 40  # tokens per user per day: two scripted answers go past it


@pytest.fixture(scope="module")
def system(
    infra_settings: InfraSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    env = {"CHATLOG_TOKEN_QUOTA_PER_DAY": str(QUOTA)}
    with running_system(infra_settings, tmp_path_factory.mktemp("usage"), env) as sys_:
        yield sys_


def client_of(system: System, settings: InfraSettings) -> httpx.Client:
    with pg_connect(settings) as conn:
        apply_auth_ddl(conn)
        key = create_key(conn, f"meter-{uuid.uuid4().hex[:8]}")
    origin = system.base_url.removesuffix("/v1")
    return httpx.Client(base_url=origin, timeout=60, headers={"Authorization": f"Bearer {key}"})


def ask(client: httpx.Client, text: str) -> httpx.Response:
    body = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": text}]}
    return client.post("/v1/chat/completions", json=body)


def today_usage(client: httpx.Client) -> dict[str, Any]:
    r = client.get("/v1/usage", params={"start": int(time.time()) - 1, "group_by": "model"})
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["data"][-1]["results"]
    return results[0] if results else {}


def test_usage_is_metered_and_a_user_past_the_quota_is_refused(
    system: System, infra_settings: InfraSettings
) -> None:
    with client_of(system, infra_settings) as alice, client_of(system, infra_settings) as bob:
        spent = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        while spent["prompt_tokens"] + spent["completion_tokens"] < QUOTA:
            done = ask(alice, f"question {spent['requests']}")
            assert done.status_code == 200, done.text
            for k in ("prompt_tokens", "completion_tokens"):
                spent[k] += done.json()["usage"][k]
            spent["requests"] += 1
        # the meter folds the prompts and their finals (two topics) at their own pace: wait
        # for both, then compare every figure
        usage = eventually(
            lambda: (u := today_usage(alice)).get("num_model_requests") == spent["requests"]
            and u.get("output_tokens") == spent["completion_tokens"]
            and u
        )
        assert (usage["model"], usage["input_tokens"], usage["output_tokens"]) == (
            SCRIPTED_MODEL,
            spent["prompt_tokens"],
            spent["completion_tokens"],
        )
        refused = ask(alice, "one more")
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
        assert 0 < int(refused.headers["retry-after"]) <= 86_400
        assert ask(bob, "my own quota").status_code == 200  # per user
        assert today_usage(alice)["num_model_requests"] == spent["requests"]  # not metered
