"""When the model is away (#14): the inference process is killed, then restarted.

One system for the module (scripted engine on real Ray Serve), with short deadlines so
the outage plays out in seconds: queue timeout 6 s, replicas stale after 3 s, breaker
cool-down 2 s. What a client sees is recorded in TIMELINE and printed (run with `-s`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from infra.settings import InfraSettings
from infra.system import System, component
from schemas import CompletionFailed, CompletionStarted, TokenChunk
from tests.e2e.conftest import SCRIPTED_MODEL, User, running_system
from tests.e2e.faults import component_pid, descendants, echo, read_topic
from tests.e2e.sse import eventually, read_until_end, text_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUEUE_TIMEOUT_S = 6
ENV = {
    "CHATLOG_QUEUE_TIMEOUT_S": str(QUEUE_TIMEOUT_S),
    "CHATLOG_REPLICA_STALE_S": "3",
    "CHATLOG_BREAKER_COOLDOWN_S": "2",
}
TIMELINE: list[str] = []


@pytest.fixture(scope="module")
def system(
    infra_settings: InfraSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    with running_system(infra_settings, tmp_path_factory.mktemp("system"), ENV) as sys_:
        yield sys_


def body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": content}], **extra}


def submit(user: User, content: str, **extra: Any) -> httpx.Response:
    return user.command.post(
        "/v1/chat/completions", json=body(content, **extra), headers={"Prefer": "respond-async"}
    )


def kill_inference(system: System) -> None:
    """SIGKILL `python -m inference` and every process under it (Ray's raylet, workers,
    the Serve replica): a machine losing its model, with no clean-stop beat."""
    root = component_pid(system, "inference")
    for pid in [root, *descendants(root)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(root, 0)
    system.pidfile(component("inference")).unlink(missing_ok=True)


def note(t0: float, what: str) -> None:
    TIMELINE.append(f"t={time.monotonic() - t0:6.1f}s  {what}")


def test_outage_refuses_fast_times_out_the_queued_and_recovers_by_itself(
    system: System, alice: User
) -> None:
    # Before: the model is listed with its live replica, and a prompt streams.
    models = eventually(
        lambda: (
            (m := alice.query.get("/v1/models").json())["data"]
            and m["data"][0].get("live_replicas")
            and m
        ),
        timeout_s=30,
    )
    assert [d["id"] for d in models["data"]] == [SCRIPTED_MODEL]
    warm = submit(alice, "before the outage")
    assert warm.status_code == 202, warm.text
    assert text_of(read_until_end(alice.query, warm.json()["stream_url"])) == echo(
        "before the outage"
    )

    # The outage: prompts accepted in the seconds before anyone can know it is gone.
    t0 = time.monotonic()
    kill_inference(system)
    note(t0, "inference SIGKILLed (replica, raylet, Serve: no clean-stop beat)")
    queued = submit(alice, "queued while the model died")
    assert queued.status_code == 202, queued.text  # the last beat is still fresh
    note(t0, f"POST (async) -> {queued.status_code} queued {queued.json()['id']}")
    waited: dict[str, Any] = {}

    def plain_call() -> None:
        started = time.monotonic()
        resp = alice.command.post(
            "/v1/chat/completions", json=body("a plain call that waits", stream=False), timeout=60
        )
        waited.update(resp=resp, took=time.monotonic() - started)

    waiter = threading.Thread(target=plain_call)
    waiter.start()

    # Within a few seconds new prompts are refused: 503 model_unavailable + Retry-After.
    refused = eventually(lambda: (r := submit(alice, "during")).status_code == 503 and r, 15)
    note(
        t0,
        f"POST -> 503 {refused.json()['error']['code']} Retry-After={refused.headers['retry-after']}",
    )
    assert refused.json()["error"]["code"] == "model_unavailable"
    assert refused.json()["error"]["type"] == "service_unavailable"
    assert int(refused.headers["retry-after"]) >= 1
    listing = alice.query.get("/v1/models").json()
    assert listing["data"] == []
    assert [d["id"] for d in listing["unavailable"]] == [SCRIPTED_MODEL]
    ready = httpx.get(f"{system.command_url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["models"][SCRIPTED_MODEL]["breaker"] == "open"
    note(t0, f"GET /v1/models -> data=[] unavailable=[{SCRIPTED_MODEL}]; /readyz -> 503")

    # The queued prompt's stream ends with `error` once its deadline passes.
    evs = read_until_end(alice.query, queued.json()["stream_url"])
    note(t0, f"stream of the queued prompt ended: {evs[-1].event} {evs[-1].data['error']['code']}")
    assert [ev.event for ev in evs] == ["error"]
    assert evs[-1].data["error"]["code"] == "queue_timeout"
    # ... and the waiting plain call answers 503 instead of hanging.
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "the plain call hung"
    resp = waited["resp"]
    note(
        t0,
        f"plain call -> {resp.status_code} {resp.json()['error']['code']} after {waited['took']:.1f}s",
    )
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "queue_timeout"
    assert "retry-after" in resp.headers

    # Recovery: restart it; the breaker closes by itself and prompts stream again.
    system.start(component("inference"))
    note(t0, "inference restarted and up")

    def accepted() -> httpx.Response | None:
        r = submit(alice, "after the recovery")
        return r if r.status_code == 202 else None

    after = eventually(accepted, timeout_s=60, interval_s=0.5)
    note(t0, f"POST -> {after.status_code} (breaker closed by itself)")
    assert text_of(read_until_end(alice.query, after.json()["stream_url"])) == echo(
        "after the recovery"
    )
    closed = eventually(
        lambda: httpx.get(f"{system.command_url}/readyz").json()["models"][SCRIPTED_MODEL][
            "breaker"
        ]
        == "closed",
        timeout_s=30,
    )
    assert closed
    note(t0, "/readyz: breaker closed")
    # A retry in the timed-out conversation: its partition, behind the old prompt.
    retry = submit(alice, "retrying", conversation_id=queued.json()["conversation_id"])
    assert retry.status_code == 202, retry.text
    assert text_of(read_until_end(alice.query, retry.json()["stream_url"])) == echo("retrying")
    note(t0, "retry in the timed-out conversation streamed")
    assert (
        eventually(lambda: alice.query.get("/v1/models").json()["data"], timeout_s=10)[0]["id"]
        == SCRIPTED_MODEL
    )

    # The timed-out prompts were never generated, and each ended exactly once.
    timed_out = {queued.json()["id"], resp.headers["x-request-id"]}
    events = [
        e
        for e in read_topic(system.settings, system.settings.topics.completions)
        if getattr(e, "request_id", None) in timed_out
    ]
    assert not [e for e in events if isinstance(e, CompletionStarted | TokenChunk)]
    fails = [e for e in events if isinstance(e, CompletionFailed)]
    assert sorted(f.request_id for f in fails) == sorted(timed_out)
    assert {(f.error_code, f.attempt, f.retryable) for f in fails} == {("queue_timeout", 1, True)}
    print("\n" + "\n".join(TIMELINE))  # noqa: T201 - the outage as the client saw it
