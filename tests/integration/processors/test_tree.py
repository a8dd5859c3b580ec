"""Conversations as trees (issue #15, items 1-2), folded from the log by the real projection.

A regenerate is a sibling answer to the same user message, an edit a sibling user message;
the current leaf moves with each prompt and with BranchSwitched. The branch view, the
context a next prompt is composed from and a rebuild's digest all follow the tree; a
delete erases every branch; a log recorded before the tree (PromptSubmitted v1) replays
into the same read model.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from command_api.readmodel import ReadModel
from infra.clients import apply_read_model_ddl
from infra.settings import InfraSettings
from processors.readout import postgres_digest, search_documents
from processors.rebuild import rebuild_postgres
from processors.settings import ProcessorSettings
from query_api import views
from schemas.codec import EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER
from schemas.events import (
    BranchSwitched,
    ChatMessage,
    CompletionFinished,
    ConversationDeleted,
    Event,
    GenerationParams,
    PromptSubmitted,
    Usage,
)
from tests.integration.processors.support import (
    RawRecord,
    fold_to_end,
    processor_settings,
    publish,
    with_answers,
)

pytestmark = pytest.mark.integration

V1_LOG = Path(__file__).parents[2] / "fixtures" / "v1_log.jsonl"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SYSTEM = ChatMessage("system", "Answer in one word.")


@pytest.fixture(scope="module")
def settings(infra_settings: InfraSettings) -> ProcessorSettings:
    return processor_settings(infra_settings)


def _turn(
    cid: str, rid: str, s: int, messages: tuple[ChatMessage, ...], answer: str, **tree: Any
) -> list[Event]:
    return [
        PromptSubmitted(request_id=rid, conversation_id=cid, user_id="alice", model="m",
                        messages=messages, params=GenerationParams(max_tokens=8),
                        occurred_at=T0 + timedelta(seconds=s), **tree),
        CompletionFinished(request_id=rid, conversation_id=cid, attempt=1, finish_reason="stop",
                           usage=Usage(9, 1), text=answer,
                           occurred_at=T0 + timedelta(seconds=s, milliseconds=500)),
    ]  # fmt: skip


def _tree_log(cid: str, r: str = "r") -> list[Event]:
    """r1 -> r2; r3 regenerates r2, r4 edits r2 and r5 follows r4; then a switch to r3
    (request ids are global: another conversation names them with another prefix `r`)."""
    u1, u2 = ChatMessage("user", "Capital of France?"), ChatMessage("user", "Of Italy?")
    a1 = ChatMessage("assistant", "Paris.")
    edited = ChatMessage("user", "Of Spain?")
    return [
        *_turn(cid, f"{r}1", 1, (SYSTEM, u1), "Paris."),
        *_turn(cid, f"{r}2", 2, (SYSTEM, u1, a1, u2), "Rome.", parent_request_id=f"{r}1"),
        *_turn(cid, f"{r}3", 3, (SYSTEM, u1, a1, u2), "Roma.", parent_request_id=f"{r}1",
               branch="regenerate", sibling_of=f"{r}2"),
        *_turn(cid, f"{r}4", 4, (SYSTEM, u1, a1, edited), "Madrid.", parent_request_id=f"{r}1",
               branch="edit", sibling_of=f"{r}2"),
        *_turn(cid, f"{r}5", 5, (SYSTEM, u1, a1, edited, ChatMessage("assistant", "Madrid."),
                              ChatMessage("user", "Sure?")), "Yes.", parent_request_id=f"{r}4"),
        BranchSwitched(conversation_id=cid, user_id="alice", request_id=f"{r}3",
                       occurred_at=T0 + timedelta(seconds=6)),
    ]  # fmt: skip


async def _branch(settings: ProcessorSettings, cid: str) -> list[tuple[str, str, int, int]]:
    """(message id, content, sibling index, sibling count), root first, as the view has it."""
    async with await psycopg.AsyncConnection.connect(settings.postgres_url) as conn:
        rows = await views.branch_page(conn, cid, None, 100)
    out = []
    for r in reversed(rows):
        siblings = r["siblings"] or [r["node"]]
        out.append((r["id"], r["content"], siblings.index(r["node"]), len(siblings)))
    return out


async def _history(settings: ProcessorSettings, cid: str) -> list[ChatMessage]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(settings.postgres_url, open=False)
    await pool.open()
    try:
        return await ReadModel(pool).history(cid)
    finally:
        await pool.close()


async def test_the_tree_folds_switches_survives_a_rebuild_and_is_deleted_whole(
    settings: ProcessorSettings,
) -> None:
    cid = "conv-tree"
    publish(settings, with_answers(settings, _tree_log(cid)))
    await fold_to_end(settings)

    # The switch chose r3: root r1 (its system prompt too), then the regenerated answer,
    # the second of two answers to "Of Italy?", which is the first of two user messages.
    assert await _branch(settings, cid) == [
        ("r1:ctx000", "Answer in one word.", 0, 1),
        ("r1:user", "Capital of France?", 0, 1),
        ("r1:assistant", "Paris.", 0, 1),
        ("r3:user", "Of Italy?", 0, 2),
        ("r3:assistant", "Roma.", 1, 2),
    ]
    # A continuation's context is that branch, not the edited one.
    assert await _history(settings, cid) == [
        SYSTEM, ChatMessage("user", "Capital of France?"), ChatMessage("assistant", "Paris."),
        ChatMessage("user", "Of Italy?"), ChatMessage("assistant", "Roma."),
    ]  # fmt: skip
    async with await psycopg.AsyncConnection.connect(settings.postgres_url) as conn:
        every = {r["id"] for r in await views.tree(conn, cid)}
    assert {f"r{i}:assistant" for i in range(1, 6)} <= every

    live = postgres_digest(settings)
    await rebuild_postgres(settings, quiet=True)
    assert postgres_digest(settings) == live

    publish(settings, [ConversationDeleted(conversation_id=cid, user_id="alice")])
    await fold_to_end(settings)
    with psycopg.connect(settings.postgres_url) as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM chatlog.messages WHERE conversation_id = %(c)s)"
            " + (SELECT count(*) FROM chatlog.completions WHERE conversation_id = %(c)s)",
            {"c": cid},
        ).fetchone()
    assert left == (0,)


async def test_search_finds_a_regenerated_question_once(settings: ProcessorSettings) -> None:
    """A regenerate repeats its user message in the read model (each request keeps its own
    row); the index holds the question once, and every answer and edit beside it."""
    cid = "conv-tree-search"
    publish(settings, with_answers(settings, _tree_log(cid, "s")))
    await fold_to_end(settings, search=True)
    docs = [d for d in search_documents(settings) if d["conversation_id"] == cid]
    contents = sorted(d["content"] for d in docs)
    assert contents.count("Of Italy?") == 1
    assert {"Rome.", "Roma.", "Of Spain?", "Madrid."} <= set(contents)


def _recorded_v1_log() -> list[RawRecord]:
    """The fixture: records written by the code before the tree, bytes as they were."""
    out: list[RawRecord] = []
    for line in V1_LOG.read_text().splitlines():
        r = json.loads(line)
        headers = [
            (EVENT_TYPE_HEADER, r["event_type"].encode()),
            (SCHEMA_VERSION_HEADER, str(r["schema_version"]).encode()),
        ]
        out.append((r["topic"], r["key"].encode(), base64.b64decode(r["value"]), headers))
    return out


async def test_a_recorded_v1_log_replays_into_the_tree(settings: ProcessorSettings) -> None:
    topics = {"conversations": settings.topics.conversations,
              "completions": settings.topics.completions}  # fmt: skip
    records = [(topics[t], k, v, h) for t, k, v, h in _recorded_v1_log()]
    assert any(dict(h)[SCHEMA_VERSION_HEADER] == b"1" for *_, h in records)
    publish(settings, records)
    await fold_to_end(settings)

    # v1's explicit parent_request_id (r3 after r1) was already a fork: now a branch, the
    # newest prompt its current leaf, r2 and r3 two user messages after "Paris.".
    assert await _branch(settings, "conv-v1") == [
        ("r1:ctx000", "Answer in one word.", 0, 1),
        ("r1:user", "Capital of France?", 0, 1),
        ("r1:assistant", "Paris.", 0, 1),
        ("r3:user", "Of Spain?", 1, 2),
        ("r3:assistant", "Madrid.", 0, 1),
    ]
    with psycopg.connect(settings.postgres_url) as conn:
        rows = conn.execute(
            "SELECT request_id, parent_request_id, origin_request_id, branch"
            " FROM chatlog.completions WHERE conversation_id = 'conv-v1' ORDER BY request_id"
        ).fetchall()
    assert rows == [("r1", None, "r1", None), ("r2", "r1", "r2", None), ("r3", "r1", "r3", None)]


async def test_rows_folded_before_the_tree_are_read_as_one_branch(
    settings: ProcessorSettings,
) -> None:
    """A read model upgraded in place: 004_tree.sql gives its old rows the v1 reading."""
    cid = "conv-legacy"
    publish(settings, with_answers(settings, [
        *_turn(cid, "l1", 1, (SYSTEM, ChatMessage("user", "One?")), "1."),
        *_turn(cid, "l2", 2, (ChatMessage("user", "Two?"),), "2.", parent_request_id="l1"),
    ]))  # fmt: skip
    await fold_to_end(settings)
    with psycopg.connect(settings.postgres_url) as conn:  # as the pre-tree fold left them
        conn.execute(
            "UPDATE chatlog.completions SET parent_request_id = NULL, origin_request_id = NULL"
            " WHERE conversation_id = %s",
            (cid,),
        )
        conn.execute("UPDATE chatlog.conversations SET current_request_id = NULL WHERE id = %s",
                     (cid,))  # fmt: skip
    apply_read_model_ddl(settings)
    assert [m[0] for m in await _branch(settings, cid)] == [
        "l1:ctx000", "l1:user", "l1:assistant", "l2:user", "l2:assistant",
    ]  # fmt: skip
