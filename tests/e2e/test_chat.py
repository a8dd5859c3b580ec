"""The product as a user sees it: HTTP in, streams and history and search out.

The four services run as processes (`python -m …`) over real Kafka, Postgres,
Meilisearch and Ray Serve, with the scripted engine: it answers `Echo: <prompt>` three
times over at 100 tokens (bytes) per second, so every expected text is known.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer

from infra.settings import InfraSettings
from infra.system import System
from schemas import PromptSubmitted, decode
from tests.e2e.conftest import SCRIPTED_MODEL, User
from tests.e2e.sse import eventually, read_until_end, text_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DELETED: list[str] = []  # conversations deleted by a test, checked again after the rebuild


def echo(prompt: str) -> str:
    return " ".join([f"Echo: {prompt}"] * 3)


def submit(user: User, content: str, **extra: Any) -> dict[str, Any]:
    body = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": content}], **extra}
    resp = user.command.post("/v1/chat/completions", json=body, headers={"Prefer": "respond-async"})
    assert resp.status_code == 202, resp.text
    accepted: dict[str, Any] = resp.json()
    return accepted


def assistant_message(user: User, conversation_id: str) -> dict[str, Any] | None:
    resp = user.query.get(f"/v1/conversations/{conversation_id}/messages")
    if resp.status_code != 200:
        return None
    msgs = [m for m in resp.json()["data"] if m["role"] == "assistant"]
    return msgs[0] if msgs and msgs[0]["status"] in ("finished", "cancelled") else None


def search_ids(user: User, query: str) -> set[str]:
    resp = user.query.get("/v1/search", params={"q": query})
    assert resp.status_code == 200, resp.text
    return {hit["conversation_id"] for hit in resp.json()["data"]}


def test_prompt_streams_then_lands_in_history_and_search(alice: User, bob: User) -> None:
    word = f"zebra{uuid.uuid4().hex[:6]}"
    accepted = submit(alice, f"tell me about {word} herds")
    evs = read_until_end(alice.query, accepted["stream_url"])
    assert evs[-1].event == "done" and evs[-1].data["finish_reason"] == "stop"
    chunk_ids = [ev.id for ev in evs if ev.event == "chunk"]
    assert chunk_ids == [f"1:{i}" for i in range(len(chunk_ids))]
    streamed = text_of(evs)
    assert streamed == echo(f"tell me about {word} herds")

    conv = accepted["conversation_id"]
    message = eventually(lambda: assistant_message(alice, conv))
    assert message["content"] == streamed
    assert eventually(lambda: conv in search_ids(alice, word))
    # Bob sees none of it: not the conversation, not the stream, not the search hit.
    assert bob.query.get(f"/v1/conversations/{conv}").status_code == 404
    assert bob.query.get(accepted["stream_url"]).status_code == 404
    assert conv not in search_ids(bob, word)
    # Resuming from the middle yields exactly the rest.
    middle = chunk_ids[len(chunk_ids) // 2]
    rest = read_until_end(alice.query, accepted["stream_url"], last_event_id=middle)
    assert text_of(evs[: chunk_ids.index(middle) + 1]) + text_of(rest) == streamed


def test_official_openai_client_streams_and_answers(alice: User, system) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{system.command_url}/v1", api_key=alice.key, max_retries=0)
    parts, finish = [], None
    for chunk in client.chat.completions.create(
        model=SCRIPTED_MODEL, stream=True, messages=[{"role": "user", "content": "hi there"}]
    ):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(parts) == echo("hi there") and finish == "stop"

    completion = client.chat.completions.create(
        model=SCRIPTED_MODEL, messages=[{"role": "user", "content": "and again"}]
    )
    assert completion.choices[0].message.content == echo("and again")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_cancel_mid_stream_keeps_exactly_the_streamed_text(alice: User) -> None:
    accepted = submit(alice, "long " * 100)
    evs = []
    from tests.e2e.sse import events

    for ev in events(alice.query, accepted["stream_url"]):
        evs.append(ev)
        if ev.event == "chunk" and len(evs) == 3:
            resp = alice.command.post(f"/v1/chat/completions/{accepted['id']}/cancel")
            assert resp.status_code in (200, 202), resp.text
        if ev.event in ("done", "error"):
            break
    assert evs[-1].event == "done" and evs[-1].data["finish_reason"] == "cancelled"
    streamed = text_of(evs)
    assert 0 < len(streamed) < len(echo("long " * 100))
    message = eventually(lambda: assistant_message(alice, accepted["conversation_id"]))
    assert (message["status"], message["content"]) == ("cancelled", streamed)


def test_continuing_a_conversation_sends_the_first_answer_as_context(
    alice: User, infra_settings: InfraSettings
) -> None:
    first = submit(alice, "first question")
    read_until_end(alice.query, first["stream_url"])
    second = submit(alice, "second question", conversation_id=first["conversation_id"])
    evs = read_until_end(alice.query, second["stream_url"])
    assert text_of(evs) == echo("second question")

    prompt = _prompt_submitted(infra_settings, second["id"])
    assert [(m.role, m.content) for m in prompt.messages] == [
        ("user", "first question"),
        ("assistant", echo("first question")),
        ("user", "second question"),
    ]


def _branch_when(user: User, conversation_id: str, newest: str) -> list[dict[str, Any]] | None:
    """The current branch (newest first) once its newest answer is `newest`'s, finished."""
    resp = user.query.get(f"/v1/conversations/{conversation_id}/messages")
    data: list[dict[str, Any]] = resp.json()["data"] if resp.status_code == 200 else []
    if data and data[0]["request_id"] == newest and data[0]["status"] == "finished":
        return data
    return None


def test_regenerate_edit_and_switch_as_a_client_sees_them(
    alice: User, bob: User, infra_settings: InfraSettings
) -> None:
    first = submit(alice, "tree root")
    read_until_end(alice.query, first["stream_url"])
    conv = first["conversation_id"]
    second = submit(alice, "tree leaf", conversation_id=conv)
    read_until_end(alice.query, second["stream_url"])
    base = f"/v1/conversations/{conv}"
    regen = alice.command.post(f"{base}/messages/{second['id']}/regenerate")
    assert regen.status_code == 202, regen.text
    assert text_of(read_until_end(alice.query, regen.json()["stream_url"])) == echo("tree leaf")
    edit = alice.command.post(f"{base}/messages/{second['id']}/edit", json={"content": "tree edit"})
    assert edit.status_code == 202, edit.text
    assert text_of(read_until_end(alice.query, edit.json()["stream_url"])) == echo("tree edit")

    def shown(page: list[dict[str, Any]]) -> list[tuple[str, str, int, int]]:
        return [(m["role"], m["content"], m["sibling_index"], m["sibling_count"]) for m in page]

    # The edit is current: the second of two user messages after the root's answer.
    assert shown(eventually(lambda: _branch_when(alice, conv, edit.json()["id"]))) == [
        ("assistant", echo("tree edit"), 0, 1), ("user", "tree edit", 1, 2),
        ("assistant", echo("tree root"), 0, 1), ("user", "tree root", 0, 1),
    ]  # fmt: skip
    # "< 2 / 2 >" on the regenerated answer: switch to it, and continue from there.
    switched = alice.command.post(f"{base}/branch", json={"request_id": regen.json()["id"]})
    assert switched.status_code == 200, switched.text
    assert shown(eventually(lambda: _branch_when(alice, conv, regen.json()["id"]))) == [
        ("assistant", echo("tree leaf"), 1, 2), ("user", "tree leaf", 0, 2),
        ("assistant", echo("tree root"), 0, 1), ("user", "tree root", 0, 1),
    ]  # fmt: skip
    third = submit(alice, "tree next", conversation_id=conv)
    read_until_end(alice.query, third["stream_url"])
    assert _prompt_submitted(infra_settings, third["id"]).parent_request_id == regen.json()["id"]
    tree = alice.query.get(f"{base}/tree").json()
    assert len({m["request_id"] for m in tree["data"]}) == 5
    assert bob.query.get(f"{base}/tree").status_code == 404
    assert bob.command.post(f"{base}/branch", json={"request_id": first["id"]}).status_code == 404


def _prompt_submitted(settings: InfraSettings, request_id: str) -> PromptSubmitted:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"e2e-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.topics.conversations])
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            event = decode(msg.value(), msg.headers())
            if isinstance(event, PromptSubmitted) and event.request_id == request_id:
                return event
    finally:
        consumer.close()
    raise AssertionError(f"no PromptSubmitted for {request_id}")


def test_deleted_conversation_is_gone_from_history_and_search(alice: User) -> None:
    word = f"walrus{uuid.uuid4().hex[:6]}"
    accepted = submit(alice, f"{word} facts")
    read_until_end(alice.query, accepted["stream_url"])
    conv = accepted["conversation_id"]
    assert eventually(lambda: conv in search_ids(alice, word))

    assert alice.command.delete(f"/v1/conversations/{conv}").status_code in (200, 202, 204)
    DELETED.append(conv)
    eventually(lambda: alice.query.get(f"/v1/conversations/{conv}").status_code == 404)
    eventually(lambda: conv not in search_ids(alice, word))
    listed = alice.query.get("/v1/conversations", params={"limit": 100}).json()["data"]
    assert conv not in {c["id"] for c in listed}


def processors(system: System, *args: str) -> str:
    """Run a `python -m processors` operator command against the running system."""
    done = subprocess.run(
        [sys.executable, "-m", "processors", *args],
        env={**os.environ, **system.env()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def settled_digest(system: System, projection: str) -> dict[str, str]:
    """The digest once the projection has caught up (two equal digests in a row)."""
    previous = None
    for _ in range(60):
        current: dict[str, str] = json.loads(
            processors(system, "digest", "--projection", projection)
        )
        if current == previous:
            return current
        previous = current
        time.sleep(0.5)
    raise AssertionError(f"{projection} digest never settled")


def test_rebuilding_every_projection_while_clients_read_keeps_the_digest(
    alice: User, system: System
) -> None:
    accepted = submit(alice, "one more before the rebuild")
    read_until_end(alice.query, accepted["stream_url"])
    eventually(lambda: assistant_message(alice, accepted["conversation_id"]))
    before = {p: settled_digest(system, p) for p in ("postgres", "search")}
    assert int(before["search"]["documents"]) > 0

    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            resp = alice.query.get("/v1/conversations", params={"limit": 100})
            seen.append((resp.status_code, len(resp.json().get("data", []))))
            time.sleep(0.02)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        processors(system, "replay", "--projection", "postgres", "--quiet")
        processors(system, "replay", "--projection", "search", "--quiet")
    finally:
        stop.set()
        thread.join()

    after = {p: settled_digest(system, p) for p in ("postgres", "search")}
    assert after == before
    assert seen and {status for status, _ in seen} == {200}
    assert min(count for _, count in seen) == max(count for _, count in seen) > 0
    for conv in DELETED:
        assert alice.query.get(f"/v1/conversations/{conv}").status_code == 404
    # The rebuilt read model keeps serving new work.
    accepted = submit(alice, "after the rebuild")
    assert text_of(read_until_end(alice.query, accepted["stream_url"])) == echo("after the rebuild")
    eventually(lambda: assistant_message(alice, accepted["conversation_id"]))
