"""OpenAI's Responses API through the front door, with the real `openai` SDK unchanged.

A response is a chat completion of the log (same events); the scripted engine answers
`Echo: <last message>` three times over, so every text is known.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI
from openai.types.responses import Response

from infra.system import System
from tests.e2e.conftest import SCRIPTED_MODEL
from tests.e2e.sse import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TYPES = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
RESUME = " ".join(["resume"] * 10)
TAIL = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def echo(text: str) -> str:
    return " ".join([f"Echo: {text}"] * 3)


@pytest.fixture(scope="module")
def alice(system: System, keys: dict[str, str]) -> Iterator[OpenAI]:
    with OpenAI(base_url=system.base_url, api_key=keys["alice"], max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def bob(system: System, keys: dict[str, str]) -> Iterator[OpenAI]:
    with OpenAI(base_url=system.base_url, api_key=keys["bob"], max_retries=0) as client:
        yield client


def extra(response: Response, name: str) -> Any:
    return response.to_dict()[name]


def finished(client: OpenAI, response_id: str) -> Response:
    def poll() -> Response | None:
        r = client.responses.retrieve(response_id)
        return r if r.status in ("completed", "cancelled", "failed", "incomplete") else None

    done: Response = eventually(poll)
    return done


def check_stream(events: list[Any], text: str) -> None:
    """The OpenAI event sequence, numbered 0..n-1, whose deltas make `text`."""
    types = [e.type for e in events]
    assert types[:4] == TYPES and types[-4:] == TAIL, types
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events[4:-4]) == text
    assert events[-1].response.output_text == text


def test_create_waits_for_the_answer_and_retrieve_reads_it(alice: OpenAI) -> None:
    r = alice.responses.create(model=SCRIPTED_MODEL, input="hello", instructions="Be brief.")
    assert (r.status, r.output_text, r.instructions) == ("completed", echo("hello"), "Be brief.")
    assert r.usage is not None and r.usage.output_tokens > 0
    again = alice.responses.retrieve(r.id)
    assert (again.status, again.output_text) == ("completed", echo("hello"))
    items = alice.responses.input_items.list(r.id, order="asc")
    raw: list[dict[str, Any]] = [item.to_dict() for item in items.data]
    texts = [(i["role"], i["content"][0]["text"]) for i in raw]
    assert texts == [("system", "Be brief."), ("user", "hello")]


def test_create_streams_the_openai_events(alice: OpenAI) -> None:
    events = list(
        alice.responses.create(
            model=SCRIPTED_MODEL,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "streamed"}]}],
            stream=True,
        )
    )
    check_stream(events, echo("streamed"))


def test_background_answers_at_once_then_completes(alice: OpenAI) -> None:
    r = alice.responses.create(model=SCRIPTED_MODEL, input="later", background=True)
    assert r.status in ("queued", "in_progress") and r.background
    assert finished(alice, r.id).output_text == echo("later")


def test_a_dropped_stream_resumes_with_exactly_the_rest(alice: OpenAI) -> None:
    stream = alice.responses.create(
        model=SCRIPTED_MODEL, input=RESUME, stream=True, background=True
    )
    seen: list[Any] = []
    for event in stream:
        seen.append(event)
        if len(seen) == 8:
            break
    stream.close()  # the connection drops; the generation goes on
    response_id = seen[0].response.id
    rest = list(
        alice.responses.retrieve(response_id, stream=True, starting_after=seen[-1].sequence_number)
    )
    check_stream(seen + rest, echo(RESUME))
    whole = list(alice.responses.retrieve(response_id, stream=True))
    assert [e.to_dict() for e in whole] == [e.to_dict() for e in seen + rest]


def test_cancel_stops_a_background_response(alice: OpenAI) -> None:
    r = alice.responses.create(model=SCRIPTED_MODEL, input="long " * 100, background=True)
    eventually(lambda: alice.responses.retrieve(r.id).output_text or None)
    alice.responses.cancel(r.id)
    done = finished(alice, r.id)
    assert done.status == "cancelled"
    assert 0 < len(done.output_text) < len(echo("long " * 100))


def test_previous_response_id_chains_three_turns(alice: OpenAI, system: System) -> None:
    r1 = alice.responses.create(model=SCRIPTED_MODEL, input="one")
    r2 = alice.responses.create(model=SCRIPTED_MODEL, input="two", previous_response_id=r1.id)
    r3 = alice.responses.create(model=SCRIPTED_MODEL, input="three", previous_response_id=r2.id)
    assert r3.output_text == echo("three") and r3.previous_response_id == r2.id
    conversation = extra(r1, "conversation_id")
    assert extra(r2, "conversation_id") == extra(r3, "conversation_id") == conversation
    with httpx.Client(base_url=system.base_url, timeout=30) as http:
        resp = http.get(
            f"/conversations/{conversation}/messages",
            headers={"Authorization": f"Bearer {alice.api_key}"},
        )
    assert resp.status_code == 200, resp.text
    turns = [(m["role"], m["content"]) for m in reversed(resp.json()["data"])]
    assert turns == [
        ("user", "one"),
        ("assistant", echo("one")),
        ("user", "two"),
        ("assistant", echo("two")),
        ("user", "three"),
        ("assistant", echo("three")),
    ]
    assert [i.id for i in alice.responses.input_items.list(r3.id).data] == [f"msg_{r3.id}:user"]
    r4 = alice.responses.create(model=SCRIPTED_MODEL, input="four", conversation=conversation)
    assert extra(r4, "conversation_id") == conversation and r4.output_text == echo("four")


def test_users_are_isolated_on_every_path(alice: OpenAI, bob: OpenAI) -> None:
    r = alice.responses.create(model=SCRIPTED_MODEL, input="mine")
    for call in (
        lambda: bob.responses.retrieve(r.id),
        lambda: list(bob.responses.retrieve(r.id, stream=True)),
        lambda: bob.responses.input_items.list(r.id),
        lambda: bob.responses.cancel(r.id),
        lambda: bob.responses.delete(r.id),
        lambda: bob.responses.create(
            model=SCRIPTED_MODEL, input="yours?", previous_response_id=r.id
        ),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert alice.responses.retrieve(r.id).output_text == echo("mine")


def test_delete_then_errors_are_openai_shaped(alice: OpenAI) -> None:
    r = alice.responses.create(model=SCRIPTED_MODEL, input="gone")
    alice.responses.delete(r.id)

    def gone() -> bool:
        try:
            alice.responses.retrieve(r.id)
        except NotFoundError:
            return True
        return False

    eventually(gone)
    with pytest.raises(BadRequestError) as bad:
        alice.responses.create(model="no-such-model", input="x")
    assert bad.value.code == "model_not_found" and bad.value.param == "model"
    with pytest.raises(BadRequestError) as bad:
        alice.responses.create(model=SCRIPTED_MODEL, input="x", max_output_tokens=10**9)
    assert bad.value.param == "max_output_tokens"


def test_a_failed_generation_is_a_failed_response(alice: OpenAI) -> None:
    too_long = "y" * 5000  # over the scripted engine's context: fails, not retried
    r = alice.responses.create(model=SCRIPTED_MODEL, input=too_long)
    assert r.status == "failed" and r.error is not None and r.error.message
    events = list(alice.responses.retrieve(r.id, stream=True))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
