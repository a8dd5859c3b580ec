"""The breaker gate on the accept path (#14): it refuses NEW prompts of a model that is down,
never the replay of one it accepted (a client retrying under its Idempotency-Key during
the outage must learn its request id, or it gives up on a prompt that will be answered).

The model's replica is a beat this test writes on chat.replicas: `serving`, then `stopped`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from command_api import CommandSettings
from infra.clients import aio_producer
from schemas import encode
from schemas.events import ReplicaHeartbeat
from tests.integration.command_api.conftest import prompt, running_app

MODEL = "SmolLM2-135M-Instruct"


async def beat(settings: CommandSettings, replica_id: str, state: str) -> None:
    producer = aio_producer(settings)
    await producer.start()
    try:
        event = ReplicaHeartbeat(
            replica_id=replica_id, model=MODEL, state=state, running=0, waiting=0, interval_ms=1000
        )
        value, headers = encode(event)
        await producer.send_and_wait(
            settings.topics.replicas, value, key=event.key.encode(), headers=headers
        )
    finally:
        await producer.stop()


async def until(check: Callable[[], bool], timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.1)


async def test_a_replay_is_answered_while_the_breaker_refuses_new_prompts(
    settings: CommandSettings, new_user: Callable[[], tuple[str, dict[str, str]]]
) -> None:
    _, auth = new_user()
    replica = f"replica-{uuid.uuid4().hex[:8]}"
    async with running_app(settings) as (app, client):
        table = app.state.ctx.availability.view.table
        await beat(settings, replica, "serving")
        await until(lambda: (h := table.health(MODEL)) is not None and h.available)
        key = {**auth, "Idempotency-Key": f"gate-{uuid.uuid4().hex}"}
        body = prompt("accepted while the model was up")
        first = await client.post("/v1/chat/completions", json=body, headers=key)
        assert first.status_code == 202, first.text

        await beat(settings, replica, "stopped")  # the model is now known and down
        await until(lambda: (h := table.health(MODEL)) is not None and not h.available)
        refused = await client.post("/v1/chat/completions", json=prompt("new"), headers=auth)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "model_unavailable"
        assert int(refused.headers["retry-after"]) >= 1

        again = await client.post("/v1/chat/completions", json=body, headers=key)
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        # a different body under the same key is still the client's mistake, not an outage
        reused = await client.post("/v1/chat/completions", json=prompt("other"), headers=key)
        assert reused.status_code == 422, reused.text
        # every way to start a generation goes through the same gate
        base = f"/v1/conversations/{first.json()['conversation_id']}/messages/{first.json()['id']}"
        for path, payload in (
            ("/v1/responses", {"model": MODEL, "input": "new"}),
            (f"{base}/regenerate", {"model": MODEL}),
            (f"{base}/edit", {"model": MODEL, "content": "edited"}),
        ):
            gated = await client.post(path, json=payload, headers=auth)
            assert gated.status_code == 503, (path, gated.text)
            assert gated.json()["error"]["code"] == "model_unavailable"
