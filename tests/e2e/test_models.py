"""Several models side by side (#14 item 4), each with its own replicas and breaker.

One system for the module, three scripted models from one config: `A` and `B` run in the
Serve app (a deployment each), `C` is known to the APIs but has no replicas in the app
(`replicas: 0`): its replica is a `python -m inference --no-ray --model C` process of
this module's own, which the tests SIGKILL and restart (one model down, the others
serving). Per-model consumer groups are what make that possible. Short deadlines: replicas
stale after 3 s, breaker cool-down 3 s (3 outcomes judge the failure rate), stall 5 s.
What a client sees of C's outage is recorded in TIMELINE and printed (run with `-s`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from inference.deployment import deployment_name
from infra.local.procs import spawn
from infra.settings import InfraSettings
from infra.system import System
from schemas import CompletionFailed, CompletionStarted, TokenChunk
from tests.e2e.conftest import User, running_system
from tests.e2e.faults import read_topic
from tests.e2e.sse import SseParser, eventually, read_until_end, text_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

A, B, C = "chatlog-scripted-a", "chatlog-scripted-b", "chatlog-scripted-c"
STALL_S = 5
ENV = {
    "CHATLOG_MODELS": f"{A},{B},{C}",
    "CHATLOG_MODEL_SETTINGS": json.dumps(
        {A: {"num_cpus": 0.5}, B: {"num_cpus": 0.5}, C: {"replicas": 0}}
    ),
    "CHATLOG_REPLICA_STALE_S": "3",
    "CHATLOG_BREAKER_COOLDOWN_S": "3",
    "CHATLOG_BREAKER_MIN_CALLS": "3",
    "CHATLOG_STALL_TIMEOUT_S": str(STALL_S),
}
TIMELINE: list[str] = []


class ModelC:
    """C's one replica: a process of this module's, so it can die alone."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.log = system.run_dir / "logs" / "model-c.log"
        self.pidfile = system.run_dir / "run" / "model-c.pid"
        self.pid: int | None = None

    def start(self) -> None:
        # 20 tokens/s: a long reply is still running when the test kills it
        env = self.system.env() | {"CHATLOG_SCRIPTED_TOKEN_RATE": "20"}
        argv = [sys.executable, "-m", "inference", "--no-ray", "--model", C]
        self.pid = spawn(argv, log=self.log, pidfile=self.pidfile, env=env)

    def kill(self) -> None:
        """SIGKILL: no clean-stop beat, no commit; its beats just age out."""
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.pid = None


@pytest.fixture(scope="module")
def system(
    infra_settings: InfraSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    with running_system(infra_settings, tmp_path_factory.mktemp("system"), ENV) as sys_:
        yield sys_


@pytest.fixture(scope="module")
def model_c(system: System) -> Iterator[ModelC]:
    c = ModelC(system)
    c.start()
    try:
        yield c
    finally:
        if c.pid is not None:
            c.kill()


def body(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def submit(user: User, model: str, content: str, **headers: str) -> httpx.Response:
    return user.command.post(
        "/v1/chat/completions",
        json=body(model, content),
        headers={"Prefer": "respond-async", **headers},
    )


def echo(content: str, repeat: int = 3) -> str:
    return " ".join([f"Echo: {content}"] * repeat)


def live(user: User) -> set[str]:
    """The models /v1/models lists with a live replica."""
    return {m["id"] for m in user.query.get("/v1/models").json()["data"] if m.get("live_replicas")}


def breaker(system: System, model: str) -> dict[str, Any]:
    view: dict[str, Any] = httpx.get(f"{system.command_url}/readyz").json()["models"][model]
    return view


def started(system: System, request_ids: set[str]) -> dict[str, list[Any]]:
    """Per request, its CompletionStarted and CompletionFailed events in chat.completions."""
    out: dict[str, list[Any]] = {r: [] for r in request_ids}
    for e in read_topic(system.settings, system.settings.topics.completions):
        if getattr(e, "request_id", None) in out and isinstance(
            e, CompletionStarted | CompletionFailed | TokenChunk
        ):
            out[e.request_id].append(e)
    return out


def test_each_prompt_is_answered_by_its_own_models_replica(
    system: System, model_c: ModelC, alice: User
) -> None:
    assert eventually(lambda: live(alice) == {A, B, C}, timeout_s=60)
    sent = {
        (model, i): submit(alice, model, f"to {model} #{i}") for model in (A, B, C) for i in range(2)
    }
    for (model, i), resp in sent.items():
        assert resp.status_code == 202, resp.text
        assert resp.json()["model"] == model
        assert text_of(read_until_end(alice.query, resp.json()["stream_url"])) == echo(
            f"to {model} #{i}"
        )
    by_id = {r.json()["id"]: model for (model, _), r in sent.items()}
    for rid, events in started(system, set(by_id)).items():
        starts = [e for e in events if isinstance(e, CompletionStarted)]
        assert len(starts) == 1, events  # one replica took it: no other model's touched it
        assert starts[0].model == by_id[rid]
        if by_id[rid] == C:
            assert starts[0].replica_id.startswith("replica-")  # the --no-ray process
        else:
            assert starts[0].replica_id.startswith(deployment_name(by_id[rid]) + "#")


def test_failure_rate_opens_only_that_models_breaker(system: System, alice: User) -> None:
    for i in range(3):  # CHATLOG_BREAKER_MIN_CALLS outcomes, all failed
        resp = alice.command.post(
            "/v1/chat/completions", json=body(B, f"[[engine-fail]] {i}", stream=False)
        )
        assert resp.status_code == 500, resp.text
        assert resp.json()["error"]["code"] == "engine_error"
    refused = submit(alice, B, "after three failures")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "model_unavailable"
    assert "failed" in refused.json()["error"]["message"]
    assert breaker(system, B)["reason"] == "failure_rate"
    assert submit(alice, A, "A is not judged by B's failures").status_code == 202

    # After the cool-down a probe goes through; it succeeds, so the breaker closes.
    def probe() -> httpx.Response | None:
        r = alice.command.post("/v1/chat/completions", json=body(B, "probe", stream=False))
        return r if r.status_code == 200 else None

    ok = eventually(probe, timeout_s=30, interval_s=0.5)
    assert ok.json()["choices"][0]["message"]["content"] == echo("probe")
    assert breaker(system, B)["breaker"] == "closed"


def note(t0: float, what: str) -> None:
    TIMELINE.append(f"t={time.monotonic() - t0:6.1f}s  {what}")


def stream_events(client: httpx.Client, url: str) -> Iterator[tuple[str, Any]]:
    """A stream's events as they come, (event, data): the caller reads as far as it likes."""
    with client.stream("GET", url, timeout=60) as resp:
        assert resp.status_code == 200
        parser = SseParser()
        for line in resp.iter_lines():
            for ev in parser.feed([line]):
                yield ev.event, ev.data


def test_one_model_down_leaves_the_others_serving(
    system: System, model_c: ModelC, alice: User, bob: User
) -> None:
    assert eventually(lambda: C in live(alice), timeout_s=30)
    # Accepted before the outage: a prompt under an Idempotency-Key, and one whose long
    # answer (~900 tokens at 20/s) is still streaming when C dies.
    key = {"Idempotency-Key": f"models-outage-{time.time_ns()}"}
    kept = submit(alice, C, "accepted before the outage", **key)
    assert kept.status_code == 202, kept.text
    long = submit(alice, C, "x" * 300)
    assert long.status_code == 202, long.text
    stream = stream_events(alice.query, long.json()["stream_url"])
    assert next(kind for kind, _ in stream if kind == "chunk")  # it is generating now

    t0 = time.monotonic()
    model_c.kill()
    note(t0, f"{C}'s replica SIGKILLed while streaming {long.json()['id']}")
    # (once a second: each prompt accepted before the beats go stale holds one of alice's
    # concurrent generations until C is back)
    refused = eventually(
        lambda: (r := submit(alice, C, "during")).status_code == 503 and r, 15, interval_s=1
    )
    error = refused.json()["error"]
    note(t0, f"POST {C} -> 503 {error['code']} Retry-After={refused.headers['retry-after']}")
    assert error["code"] == "model_unavailable" and "no replica" in error["message"]
    for model in (A, B):  # the others go on serving
        other = submit(bob, model, f"{model} while C is down")
        assert other.status_code == 202, other.text
        evs = read_until_end(bob.query, other.json()["stream_url"])
        assert text_of(evs) == echo(f"{model} while C is down")
        note(t0, f"POST {model} -> 202, streamed to `done`")
    listing = alice.query.get("/v1/models").json()
    assert {m["id"] for m in listing["data"]} == {A, B}
    assert [m["id"] for m in listing["unavailable"]] == [C]
    assert httpx.get(f"{system.command_url}/readyz").json()["status"] == "degraded"
    note(t0, f"GET /v1/models -> data=[{A}, {B}] unavailable=[{C}]; /readyz degraded")

    # A client retrying the accepted prompt (same Idempotency-Key) learns its request id:
    # it was accepted, so it is answered, not refused with the outage's 503.
    again = submit(alice, C, "accepted before the outage", **key)
    note(t0, f"POST {C} again with its Idempotency-Key -> {again.status_code}")
    assert again.status_code == 202, again.text
    assert again.json()["id"] == kept.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"

    # The generation cut off mid-answer ends with `stalled` once no event came for STALL_S.
    kind, data = next((k, d) for k, d in stream if k in ("done", "error"))
    note(t0, f"stream of {long.json()['id']} ended: {kind} {data['error']['code']}")
    assert (kind, data["error"]["code"]) == ("error", "stalled")

    # C comes back: its breaker closes by itself and its prompts stream again.
    model_c.start()
    note(t0, f"{C}'s replica restarted")

    def accepted() -> httpx.Response | None:
        r = submit(alice, C, "after the recovery")
        return r if r.status_code == 202 else None

    after = eventually(accepted, timeout_s=60, interval_s=0.5)
    note(t0, f"POST {C} -> 202 (breaker closed by itself)")
    assert text_of(read_until_end(alice.query, after.json()["stream_url"])) == echo(
        "after the recovery"
    )
    note(t0, f"{after.json()['id']} streamed to `done`")

    # The stalled prompt was not generated again by the replica that came back: its one
    # attempt ended with the deadline keeper's `stalled`, exactly once.
    events = started(system, {long.json()["id"]})[long.json()["id"]]
    assert [e.attempt for e in events if isinstance(e, CompletionStarted)] == [1]
    fails = [e for e in events if isinstance(e, CompletionFailed)]
    assert [(f.error_code, f.attempt) for f in fails] == [("stalled", 1)]
    assert {e.attempt for e in events} == {1}
    print("\n" + "\n".join(TIMELINE))  # noqa: T201 - C's outage as the client saw it
