"""Regenerate, edit and switch (issue #15) through the command API's endpoints.

Every prompt the API appends is folded by the real projection (with an answer, as a replica
would write it), so each next command composes its context from the read model the way it
does in the running system: the path from the root to the new prompt's parent.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from command_api.settings import CommandSettings
from infra.settings import InfraSettings
from processors.pg_projection import PostgresProjection
from schemas import BranchSwitched, CompletionFinished, Event, PromptSubmitted, Usage
from tests.integration.command_api.conftest import events_about, prompt
from tests.integration.processors.support import processor_settings

pytestmark = pytest.mark.integration


async def _prompt_of(settings: CommandSettings, request_id: str) -> PromptSubmitted:
    [(_, event)] = await events_about(settings, request_id)
    assert isinstance(event, PromptSubmitted)
    return event


async def _fold(infra: InfraSettings, events: list[Event]) -> None:
    projection = PostgresProjection(processor_settings(infra))
    try:
        await projection.apply(events, {}, {})
    finally:
        await projection.close()


async def _answer(
    settings: CommandSettings, infra: InfraSettings, request_id: str, text: str
) -> PromptSubmitted:
    """Fold the request's PromptSubmitted and a finished answer `text`; the prompt."""
    event = await _prompt_of(settings, request_id)
    done = CompletionFinished(request_id=request_id, conversation_id=event.conversation_id,
                              attempt=1, finish_reason="stop", usage=Usage(5, 1), text=text)  # fmt: skip
    await _fold(infra, [event, done])
    return event


def _said(event: PromptSubmitted) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in event.messages]


async def test_regenerate_edit_and_switch_place_prompts_in_the_tree(
    client: httpx.AsyncClient, settings: CommandSettings, infra_settings: InfraSettings, new_user
) -> None:
    _, auth = new_user()
    _, other = new_user()

    async def post(path: str, body: dict[str, Any] | None = None, who: Any = auth) -> Any:
        resp = await client.post(path, json=body, headers=who)
        return resp

    r1 = (await post("/v1/chat/completions", prompt("Capital of France?"))).json()
    conv = r1["conversation_id"]
    await _answer(settings, infra_settings, r1["id"], "Paris.")
    r2 = (await post("/v1/chat/completions", prompt("Of Italy?", conversation_id=conv))).json()
    await _answer(settings, infra_settings, r2["id"], "Rome.")
    base = f"/v1/conversations/{conv}"

    # Regenerate: the same user message again, under the same parent.
    resp = await post(f"{base}/messages/{r2['id']}/regenerate", {"temperature": 0.5})
    assert resp.status_code == 202, resp.text
    r3 = resp.json()
    assert r3["branch"] == "regenerate" and r3["conversation_id"] == conv
    e3 = await _answer(settings, infra_settings, r3["id"], "Roma.")
    assert (e3.branch, e3.sibling_of, e3.parent_request_id) == ("regenerate", r2["id"], r1["id"])
    assert _said(e3) == [("user", "Capital of France?"), ("assistant", "Paris."),
                         ("user", "Of Italy?")]  # fmt: skip
    assert e3.params.temperature == 0.5

    # A regenerate of a regenerate names the request that first asked the message.
    r3b = (await post(f"{base}/messages/{r3['id']}/regenerate")).json()
    e3b = await _answer(settings, infra_settings, r3b["id"], "Rom.")
    assert (e3b.sibling_of, e3b.parent_request_id) == (r2["id"], r1["id"])

    # Edit and resend: a new user message beside "Of Italy?"; a retry with its
    # Idempotency-Key answers the same request, the key on another action is refused.
    keyed = {**auth, "Idempotency-Key": f"edit-{conv}"}
    resp = await post(f"{base}/messages/{r2['id']}/edit", {"content": "Of Spain?"}, keyed)
    assert resp.status_code == 202, resp.text
    again = await post(f"{base}/messages/{r2['id']}/edit", {"content": "Of Spain?"}, keyed)
    assert again.json()["id"] == resp.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other_action = await post(f"{base}/messages/{r2['id']}/regenerate", None, keyed)
    assert other_action.status_code == 422, other_action.text
    e4 = await _answer(settings, infra_settings, resp.json()["id"], "Madrid.")
    assert (e4.branch, e4.sibling_of, e4.parent_request_id) == ("edit", r2["id"], r1["id"])
    assert _said(e4)[-1] == ("user", "Of Spain?")

    # Switch back to the first regenerated answer: the next turn continues that branch.
    resp = await post(f"{base}/branch", {"request_id": r3["id"]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["current_request_id"] == r3["id"]
    [switch] = [e for _, e in await events_about(settings, conv) if isinstance(e, BranchSwitched)]
    assert switch.request_id == r3["id"]
    await _fold(infra_settings, [switch])
    r5 = (await post("/v1/chat/completions", prompt("Sure?", conversation_id=conv))).json()
    e5 = await _prompt_of(settings, r5["id"])
    assert e5.parent_request_id == r3["id"]
    assert _said(e5) == [("user", "Capital of France?"), ("assistant", "Paris."),
                         ("user", "Of Italy?"), ("assistant", "Roma."), ("user", "Sure?")]  # fmt: skip

    # Another user's ids look like ids that do not exist.
    for path, body in ((f"{base}/messages/{r2['id']}/regenerate", None),
                       (f"{base}/messages/{r2['id']}/edit", {"content": "x"}),
                       (f"{base}/branch", {"request_id": r2["id"]})):  # fmt: skip
        resp = await post(path, body, who=other)
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["param"] == "conversation_id"
    resp = await post(f"{base}/branch", {"request_id": "chatcmpl-nope"})
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "request_id"
