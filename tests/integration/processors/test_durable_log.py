"""The log is the source of truth for as long as the data lives (issue 12, item 0).

chat.completions' token chunks expire; every answer is also in chat.answers (the final
event, v2, with its text). A rebuild after the chunks are gone reproduces every stored
message; a rebuild from a log that lost its beginning, or a prompt's outcome, refuses.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from infra.clients import pg_connect
from infra.settings import InfraSettings
from processors.errors import RebuildRefused
from processors.readout import postgres_digest, search_documents
from processors.rebuild import rebuild_postgres, rebuild_search
from processors.script import Clock, exchange
from schemas.events import (
    ChatMessage,
    CompletionFinished,
    ConversationDeleted,
    ConversationRenamed,
    Event,
    PromptSubmitted,
    Usage,
)
from tests.integration.processors.support import (
    delete_all_records,
    fold_to_end,
    processor_settings,
    publish,
    with_answers,
)

pytestmark = pytest.mark.integration


def traffic(clock: Clock) -> list[Event]:
    """What replicas write: finished, retried, cancelled; a rename, a delete, a context."""
    ev: list[Event] = []
    for i in range(6):
        ev += exchange(clock, conversation_id=f"c{i}", request_id=f"r{i}", user_id="alice",
                       prompt=f"question {i} ✓ مرحبا 😀", answer=["An ", f"answer {i}", "."])  # fmt: skip
    ev += exchange(clock, conversation_id="c0", request_id="r0b", user_id="alice",
                   prompt="again", answer=["lost ", "attempt"], finish=False)  # fmt: skip
    ev += exchange(clock, conversation_id="c0", request_id="r0b", user_id="", prompt="",
                   answer=["second ", "attempt"], attempt=2, with_prompt=False)  # fmt: skip
    ev += exchange(clock, conversation_id="c1", request_id="r1b", user_id="alice",
                   prompt="long story", answer=["Once"], finish=False)  # fmt: skip
    ev.append(CompletionFinished(request_id="r1b", conversation_id="c1", attempt=1,
                                 finish_reason="cancelled", usage=Usage(3, 1), ttft_ms=4.0,
                                 occurred_at=clock()))  # fmt: skip
    first = exchange(clock, conversation_id="c9", request_id="r9", user_id="bob",
                     prompt="", answer=["fine"])  # fmt: skip
    prompt = first[0]
    assert isinstance(prompt, PromptSubmitted)
    context = (ChatMessage("system", "terse"), ChatMessage("user", "hi"),
               ChatMessage("assistant", "hello"), ChatMessage("user", "how are you?"))  # fmt: skip
    ev += [replace(prompt, messages=context), *first[1:]]
    ev.append(ConversationRenamed(conversation_id="c2", user_id="alice", title="Renamed",
                                  occurred_at=clock()))  # fmt: skip
    ev.append(ConversationDeleted(conversation_id="c3", user_id="alice", occurred_at=clock()))
    return ev


@pytest.fixture(scope="module")
def settings(infra_settings: InfraSettings):  # type: ignore[no-untyped-def]
    return processor_settings(infra_settings)


def _messages(settings) -> list[tuple[object, ...]]:
    with pg_connect(settings) as conn:
        return conn.execute(
            "SELECT id, role, content, status, tokens FROM chatlog.messages ORDER BY id"
        ).fetchall()


async def test_a_rebuild_after_the_chunks_expired_reproduces_every_stored_message(
    settings,
) -> None:
    publish(settings, with_answers(settings, traffic(Clock())))
    await fold_to_end(settings, search=True)
    live, rows, docs = postgres_digest(settings), _messages(settings), search_documents(settings)
    assert ("r0b:assistant", "assistant", "second attempt", "finished", 2) in rows
    assert ("r1b:assistant", "assistant", "Once", "cancelled", 1) in rows
    assert len(rows) == 2 * 7 + 2 + 3  # 5 live conversations' turns + r9's context

    lows = delete_all_records(settings, settings.topics.completions)
    assert sum(lows.values()) > 0, "the traffic must have had chunks to lose"

    await rebuild_postgres(settings, quiet=True)
    assert _messages(settings) == rows
    assert postgres_digest(settings) == live
    await rebuild_search(settings, quiet=True)
    assert search_documents(settings) == docs
    assert {"second attempt", "terse", "how are you?"} <= {d["content"] for d in docs}


async def test_a_rebuild_refuses_when_a_prompt_lost_its_outcome(settings) -> None:
    """A final that only chat.completions held (an older replica: v1, no chat.answers)."""
    clock = Clock()
    old = exchange(clock, conversation_id="c7", request_id="r7", user_id="carol",
                   prompt="before v2", answer=["gone"])  # fmt: skip
    publish(settings, old)
    await fold_to_end(settings)
    live = postgres_digest(settings)
    delete_all_records(settings, settings.topics.completions)

    with pytest.raises(RebuildRefused, match=r"1 prompts have no outcome.*r7 \(conversation c7\)"):
        await rebuild_postgres(settings, quiet=True)
    assert postgres_digest(settings) == live, "the live read model must be kept"


async def test_a_rebuild_refuses_when_chat_conversations_lost_its_beginning(settings) -> None:
    live = postgres_digest(settings)
    lows = delete_all_records(settings, settings.topics.conversations)
    truncated = sorted(p for p, low in lows.items() if low > 0)
    assert truncated

    with pytest.raises(RebuildRefused, match="no longer starts at its beginning") as refused:
        await rebuild_postgres(settings, quiet=True)
    assert f"{settings.topics.conversations}[{truncated[0]}]" in str(refused.value)
    assert postgres_digest(settings) == live
    with pytest.raises(RebuildRefused, match="no longer starts at its beginning"):
        await rebuild_search(settings, quiet=True)
