"""The messages a client sends are the conversation (issue 12, item 4).

A first prompt that brings its own history (`[system, user, assistant, user]`) stores all of
it, so the next turn, continued by `conversation_id` and composed from the read model by
the command API, sees the same context the first answer was generated from; a continued
turn stores only its new message.
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from command_api.readmodel import ReadModel, compose
from infra.settings import InfraSettings
from processors.pg_projection import PostgresProjection
from processors.script import Clock
from schemas.events import (
    ChatMessage,
    CompletionFinished,
    Event,
    GenerationParams,
    PromptSubmitted,
    Usage,
)
from tests.integration.processors.support import processor_settings

pytestmark = pytest.mark.integration

FIRST = (
    ChatMessage("system", "You answer in one word."),
    ChatMessage("user", "Capital of France?"),
    ChatMessage("assistant", "Paris."),
    ChatMessage("user", "And of Italy?"),
)


@pytest.fixture(scope="module")
def settings(infra_settings: InfraSettings):  # type: ignore[no-untyped-def]
    return processor_settings(infra_settings)


def _turn(clock: Clock, rid: str, messages: tuple[ChatMessage, ...], answer: str) -> list[Event]:
    return [
        PromptSubmitted(request_id=rid, conversation_id="c1", user_id="u", model="m",
                        messages=messages, params=GenerationParams(max_tokens=8),
                        occurred_at=clock()),
        CompletionFinished(request_id=rid, conversation_id="c1", attempt=1,
                           finish_reason="stop", usage=Usage(20, 1), text=answer,
                           occurred_at=clock()),
    ]  # fmt: skip


async def _fold(settings, events: list[Event]) -> None:
    projection = PostgresProjection(settings)
    try:
        await projection.apply(events, {}, {})
    finally:
        await projection.close()


async def test_a_first_prompts_own_history_is_the_next_turns_context(settings) -> None:
    clock = Clock()
    await _fold(settings, _turn(clock, "r1", FIRST, "Rome."))
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(settings.postgres_url, open=False)
    await pool.open()
    try:
        read = ReadModel(pool)
        new = (ChatMessage("user", "And of Spain?"),)
        context = compose(await read.history("c1"), new)
        assert context == (*FIRST, ChatMessage("assistant", "Rome."), *new)

        # The continued turn's event holds that whole context; only its last message is new.
        await _fold(settings, _turn(clock, "r2", context, "Madrid."))
        assert await read.history("c1") == [*context, ChatMessage("assistant", "Madrid.")]

        # A system message sent again replaces the stored one instead of doubling it.
        again = (ChatMessage("system", "Be verbose."), ChatMessage("user", "Why?"))
        composed = compose(await read.history("c1"), again)
        assert [m for m in composed if m.role == "system"] == [again[0]]
        assert composed[0] == again[0] and composed[-1] == again[1]
    finally:
        await pool.close()
