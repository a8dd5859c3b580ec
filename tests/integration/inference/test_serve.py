"""The real Ray Serve deployment (scripted engine): Kafka in, Kafka out, metrics over HTTP."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from schemas.events import CompletionFinished, CompletionStarted, TokenChunk
from tests.integration.inference.conftest import produce, prompt

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serve_app(inference_settings):
    ray = pytest.importorskip("ray")
    from ray import serve

    from inference.deployment import build_app

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = inference_settings.model_dump(mode="json") | {"replicas": 2, "num_cpus": 0.5}
        serve.run(build_app(args), name="inference-test", route_prefix="/inference")
        yield f"http://127.0.0.1:{port}/inference/{inference_settings.model_id}"
    finally:
        serve.shutdown()
        ray.shutdown()


async def test_serve_deployment_end_to_end(inference_settings, completions, serve_app):
    from inference.deployment import deployment_name

    async with httpx.AsyncClient(timeout=10) as http:
        # both replicas join the group; wait until all partitions are owned
        async with asyncio.timeout(60):
            while True:
                owned: set[int] = set()
                for _ in range(8):
                    status = (await http.get(serve_app + "/status")).json()
                    owned |= set(status["partitions"])
                if len(owned) == inference_settings.partitions:
                    break
                await asyncio.sleep(0.5)
        ps = [prompt(f"through serve {i}") for i in range(6)]
        await produce(inference_settings, *ps)
        await completions.wait_for(lambda: all(completions.finals(p.request_id) for p in ps), 60)
        metrics = (await http.get(serve_app + "/metrics")).text
    replicas = set()
    for i, p in enumerate(ps):
        events = completions.events(p.request_id)
        assert isinstance(events[0], CompletionStarted)
        assert events[0].replica_id.startswith(deployment_name(p.model) + "#")
        replicas.add(events[0].replica_id)
        assert (
            "".join(e.text for e in events if isinstance(e, TokenChunk))
            == f"Echo: through serve {i}"
        )
        assert isinstance(events[-1], CompletionFinished)
    assert "chatlog_inference:time_to_first_token_seconds_bucket" in metrics
    assert "chatlog_inference:num_requests_running" in metrics
