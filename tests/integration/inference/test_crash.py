"""A replica SIGKILLed mid-generation: its prompt is generated again with attempt + 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from schemas.events import CompletionFinished, CompletionStarted, TokenChunk
from tests.integration.inference.conftest import produce, prompt, wait_assigned, worker

pytestmark = pytest.mark.slow


def _env(settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CHATLOG_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        CHATLOG_TOPIC_PREFIX=settings.topic_prefix,
        CHATLOG_PARTITIONS=str(settings.partitions),
        CHATLOG_MODELS=settings.models,
        CHATLOG_ENGINE="scripted",
        CHATLOG_CONSUMER_GROUP=settings.consumer_group,
        CHATLOG_SESSION_TIMEOUT_MS=str(settings.session_timeout_ms),
        CHATLOG_COMMIT_INTERVAL_MS="50",
        CHATLOG_SCRIPTED_TOKEN_RATE="100",
        CHATLOG_SCRIPTED_REPLY_REPEAT="300",
    )
    return env


async def test_sigkilled_replica_prompt_finishes_on_next_attempt(inference_settings, completions):
    p = prompt("survive a crash", max_tokens=40)
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference", "--no-ray"],
        env=_env(inference_settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await produce(inference_settings, p)
        await completions.wait_for(
            lambda: (
                len([e for e in completions.events(p.request_id) if isinstance(e, TokenChunk)]) >= 3
            ),
            timeout=60,
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert not completions.finals(p.request_id)  # killed before its 40 tokens
    async with worker(inference_settings) as w:  # joins once the dead member's session expired
        await wait_assigned(w, inference_settings.partitions, timeout=60)
        await completions.wait_for(lambda: completions.finals(p.request_id), timeout=30)
    events = completions.events(p.request_id)
    started = [e for e in events if isinstance(e, CompletionStarted)]
    assert [s.attempt for s in started] == [1, 2]
    assert started[0].replica_id != started[1].replica_id
    finals = completions.finals(p.request_id)
    assert [(f.attempt, type(f)) for f in finals] == [(2, CompletionFinished)]
    second = [e for e in events if isinstance(e, TokenChunk) and e.attempt == 2]
    assert [c.seq for c in second] == list(range(len(second)))
    assert finals[0].finish_reason == "stop"  # the new replica (repeat 1) has a short reply
    assert "".join(c.text for c in second) == "Echo: survive a crash"
