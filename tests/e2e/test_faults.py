"""Fault tests: crash or cut off one part of the running system, then check that nothing
acknowledged is lost or doubled and that the read model still equals a fresh rebuild.

The four services run as processes over a private Kafka/Postgres/Meilisearch (see
`tests/e2e/faults.py`: these tests stop those, so they never take the shared test stack
down under other tests). The scripted engine answers `Echo: <prompt>` three times at 100
tokens/s, so every expected text is known. Every test ends with `assert_consistent`
over every prompt acknowledged so far in the module.
"""

from __future__ import annotations

import functools
import os
import signal
import time
import uuid
from collections.abc import Generator, Iterator

import httpx
import pytest

from infra.harness import Services, isolated_settings
from infra.settings import InfraSettings
from infra.system import System, component
from tests.e2e.conftest import SCRIPTED_MODEL, User
from tests.e2e.faults import (
    Acked,
    assert_consistent,
    echo,
    final_state,
    private_stack,
    prompts_in_log,
    replica_pids,
    sigkill_component,
)
from tests.e2e.sse import SseEvent, events, eventually, read_until_end, text_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ACKED: list[Acked] = []  # every prompt the command API accepted in this module
QUICK_S = 10  # "no hang": a refusal within this (the services' own bounds are 3-5 s)
LOREM = " ".join(["lorem ipsum dolor sit amet"] * 4)  # ~0.3 s of reply per copy: long enough to hit


# -- fixtures: this module's own stack and system -------------------------------------------
@pytest.fixture(scope="module")
def fault_services(services: Services) -> Iterator[Services]:
    if services.source != "local" or services.stack is None:
        pytest.skip("fault tests stop services with the local launcher (not in docker mode)")
    with private_stack(services) as svc:
        yield svc


@pytest.fixture(scope="module")
def infra_settings(
    fault_services: Services, request: pytest.FixtureRequest
) -> Iterator[InfraSettings]:
    """Overrides the harness's: this module's topics, database and index live on the
    private stack (and so does tests/e2e/conftest.py's `system`, which takes this one)."""
    with isolated_settings(fault_services, request.module.__name__) as settings:
        yield settings


# -- helpers ----------------------------------------------------------------------------------
def try_submit(user: User, content: str) -> httpx.Response:
    body = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": content}]}
    resp = user.command.post(
        "/v1/chat/completions", json=body, headers={"Prefer": "respond-async"}, timeout=30
    )
    if resp.status_code == 202:
        data = resp.json()
        ACKED.append(Acked(user, data["id"], data["conversation_id"], content, data["stream_url"]))
    return resp


def submit(user: User, content: str) -> Acked:
    resp = try_submit(user, content)
    assert resp.status_code == 202, resp.text
    return ACKED[-1]


def live(client: httpx.Client, url: str) -> Generator[SseEvent, None, None]:
    """An SSE stream to read bit by bit around a fault; `close()` hangs up."""
    yield from events(client, url)


def first_chunks(stream: Iterator[SseEvent], n: int) -> list[SseEvent]:
    """Read a live stream until `n` chunks have come (it must not end before)."""
    out: list[SseEvent] = []
    for ev in stream:
        out.append(ev)
        assert ev.event not in ("done", "error"), f"ended before the fault: {out}"
        if sum(e.event == "chunk" for e in out) >= n:
            return out
    raise AssertionError(f"stream closed early: {out}")


def timed_get(client: httpx.Client, url: str, **kw: object) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    resp = client.get(url, timeout=30, **kw)  # type: ignore[arg-type]
    return resp, time.monotonic() - t0


def assert_clean_attempts(evs: list[SseEvent]) -> None:
    """Per attempt, chunk seqs 0, 1, 2… once each; a higher attempt only after its reset,
    and no chunk of an earlier attempt after that reset."""
    current, next_seq = 1, 0
    for ev in evs:
        if ev.event == "reset":
            assert ev.data["attempt"] > current, evs
            current, next_seq = ev.data["attempt"], 0
        elif ev.event == "chunk":
            assert (ev.data["attempt"], ev.data["seq"]) == (current, next_seq), ev
            assert ev.id == f"{current}:{next_seq}"
            next_seq += 1


# -- the tests --------------------------------------------------------------------------------
def test_replica_sigkill_mid_generation_retries_behind_a_clean_reset(
    system: System, alice: User, bob: User
) -> None:
    bystanders = [submit(bob, f"bystander {i} {LOREM}") for i in range(2)]
    main = submit(alice, f"survive the crash {LOREM}")
    (replica,) = replica_pids(system)

    stream = live(alice.query, main.stream_url)
    evs = first_chunks(stream, 3)
    os.kill(replica, signal.SIGKILL)  # the Ray worker of the Serve replica: a real crash
    for ev in stream:
        evs.append(ev)
        if ev.event in ("done", "error"):
            break
    stream.close()

    assert_clean_attempts(evs)
    first_try = text_of([ev for ev in evs if ev.event == "chunk" and ev.data["attempt"] == 1])
    assert echo(main.content).startswith(first_try)  # the crashed attempt's text, unmixed
    last = evs[-1]
    if last.event == "done":
        resets = [ev for ev in evs if ev.event == "reset"]
        assert last.data["attempt"] >= 2 and resets, "a crash mid-generation must retry"
        assert resets[-1].data["attempt"] == last.data["attempt"]
        assert last.data["finish_reason"] == "stop"
        assert text_of(evs) == echo(main.content)
    else:
        assert last.event == "error" and last.data["error"]["code"], last
    # Serve replaced the replica: new prompts are answered.
    assert eventually(lambda: replica_pids(system) not in ([], [replica]), timeout_s=60)
    after = submit(alice, "after the replica crash")
    assert text_of(read_until_end(alice.query, after.stream_url)) == echo(after.content)
    for a in bystanders:
        assert eventually(functools.partial(final_state, a), timeout_s=60)["attempt"] >= 2
    assert_consistent(system, ACKED)


def test_processors_sigkill_then_restart_loses_and_doubles_nothing(
    system: System, alice: User, bob: User
) -> None:
    batch = [submit(user, f"projected {i} {LOREM}") for i, user in enumerate((alice, bob) * 2)]
    # mid-flow: the projection has started writing these, none is finished yet
    eventually(lambda: any(a.user.query.get(f"/v1/chat/completions/{a.id}").json()["status"]
                           == "streaming" for a in batch), timeout_s=20, interval_s=0.05)  # fmt: skip
    sigkill_component(system, "processors")
    during = [submit(user, f"while the projector is down {user.key[-4:]}") for user in (alice, bob)]
    for a in batch + during:  # live streams do not need the projector
        assert text_of(read_until_end(a.user.query, a.stream_url)) == echo(a.content)
    system.start(component("processors"))
    assert_consistent(system, ACKED)


def test_kafka_outage_refuses_fast_then_everything_resumes(
    system: System, alice: User, fault_services: Services
) -> None:
    assert fault_services.stack is not None
    kafka = fault_services.stack.kafka
    inflight = submit(alice, f"acknowledged before the outage {LOREM}")
    stream = live(alice.query, inflight.stream_url)
    first_chunks(stream, 1)
    stream.close()
    refused = f"refused-{uuid.uuid4().hex[:8]}"
    kafka.stop()
    try:
        t0 = time.monotonic()
        resp = try_submit(alice, refused)
        took = time.monotonic() - t0
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["type"] and took < QUICK_S, took
        # reads of what is projected carry on
        history, took = timed_get(alice.query, "/v1/conversations")
        assert (history.status_code, took < QUICK_S) == (200, True), (history.text, took)
    finally:
        kafka.start()

    def resumed() -> Acked | None:
        resp = try_submit(alice, "after the outage")
        return ACKED[-1] if resp.status_code == 202 else None

    after = eventually(resumed, timeout_s=60, interval_s=1)
    assert text_of(read_until_end(alice.query, after.stream_url)) == echo(after.content)
    state = eventually(lambda: final_state(inflight), timeout_s=60)
    assert (state["status"], state["text"]) == ("finished", echo(inflight.content))
    assert_consistent(system, ACKED)
    assert all(refused not in m.content for p in prompts_in_log(system.settings)
               for m in p.messages)  # fmt: skip


def test_postgres_then_meilisearch_outage_degrades_reads_and_keeps_streams(
    system: System, alice: User, fault_services: Services
) -> None:
    stack = fault_services.stack
    assert stack is not None and stack.meili is not None

    # Postgres down: history answers 503 (not a hang, not a 500); a live stream goes on.
    a = submit(alice, f"through the postgres outage {LOREM}")
    stream = live(alice.query, a.stream_url)
    evs = first_chunks(stream, 2)
    stack.postgres.stop()
    try:
        for url in ("/v1/conversations", f"/v1/conversations/{a.conversation_id}/messages"):
            resp, took = timed_get(alice.query, url)
            assert (resp.status_code, took < QUICK_S) == (503, True), (url, resp.text, took)
            assert resp.json()["error"]["code"], resp.text
        evs += list(read_rest(stream))
        stream.close()
    finally:
        stack.postgres.start()
    assert evs[-1].event == "done" and text_of(evs) == echo(a.content)
    assert eventually(lambda: final_state(a), timeout_s=60)["text"] == echo(a.content)

    # Meilisearch down: search answers 503, history and streams carry on; search catches up.
    word = f"okapi{uuid.uuid4().hex[:6]}"
    b = submit(alice, f"{word} through the search outage {LOREM}")
    stream = live(alice.query, b.stream_url)
    evs = first_chunks(stream, 2)
    stack.meili.stop()
    try:
        resp, took = timed_get(alice.query, "/v1/search", params={"q": word})
        assert (resp.status_code, took < QUICK_S) == (503, True), (resp.text, took)
        # History keeps serving; the projection may still be catching up after the
        # Postgres restart above, so the new conversation appears when it has.
        url = f"/v1/conversations/{b.conversation_id}/messages"
        eventually(lambda: timed_get(alice.query, url)[0].status_code == 200, timeout_s=30)
        evs += list(read_rest(stream))
        stream.close()
        assert eventually(lambda: final_state(b), timeout_s=30)["text"] == echo(b.content)
    finally:
        stack.meili.start()
    assert evs[-1].event == "done" and text_of(evs) == echo(b.content)

    def found() -> bool:
        resp = alice.query.get("/v1/search", params={"q": word})
        return resp.status_code == 200 and any(
            hit["conversation_id"] == b.conversation_id for hit in resp.json()["data"]
        )

    assert eventually(found, timeout_s=60)
    assert_consistent(system, ACKED, search=True)


def read_rest(stream: Iterator[SseEvent]) -> Iterator[SseEvent]:
    """The remaining events of a live stream, through its terminal one."""
    for ev in stream:
        yield ev
        if ev.event in ("done", "error"):
            break
