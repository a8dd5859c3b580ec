"""Rule: what the command API accepts, every projection stores (issue 12, item 3).

A property test over the real path of a text: generated field values -> the event ->
`schemas.encode` -> `decode` -> the Postgres projection's fold and writes into real
Postgres -> read back, and the search projection's documents built from those rows. Any
Unicode the command API accepts (RTL, emoji, combining marks, U+FFFF, long, empty) comes
back equal; U+0000 (which it now rejects, but an older writer's record may hold) comes
back as U+FFFD instead of dead-lettering the whole event.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from infra.clients import pg_connect
from infra.settings import InfraSettings
from processors.pg_projection import PostgresProjection
from processors.search_projection import SearchProjection
from schemas.codec import decode, encode
from schemas.events import (
    ChatMessage,
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    ConversationRenamed,
    Event,
    GenerationParams,
    PromptSubmitted,
    TokenChunk,
    Usage,
)
from tests.integration.processors.support import processor_settings

pytestmark = pytest.mark.integration

SPECIAL = [
    "",
    "\uffff",
    "\u202eRTL override \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "e\u0301 a\u0308\u0323 \u1100\u1161\u11a8",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 \U0001f1eb\U0001f1f7",
    "nul \x00 inside",
    "\x00",
    "\x01\x1f\x7f\u0085\u2028\ufeff",
    "long " * 20_000,
]
# Every code point but the surrogates (the command API rejects a lone one with a 400).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40) | st.sampled_from(SPECIAL)


def stored(text: str) -> str:
    return text.replace("\x00", "\ufffd")


@pytest.fixture(scope="module")
def settings(infra_settings: InfraSettings):  # type: ignore[no-untyped-def]
    return processor_settings(infra_settings)


def _roundtrip(event: Event) -> Event:
    value, headers = encode(event)
    decoded = decode(value, headers)
    assert decoded == event
    return decoded


@hsettings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    context=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), TEXT), max_size=3),
    prompt=TEXT,
    title=TEXT,
    chunks=st.lists(TEXT, max_size=4),
    stop=st.lists(TEXT, max_size=3),
    model=TEXT,
    error=TEXT,
)
async def test_every_accepted_string_is_stored_and_indexed_as_sent(
    settings, context, prompt, title, chunks, stop, model, error
) -> None:
    cid, rid, failed = (f"{k}-{uuid.uuid4().hex}" for k in ("c", "r", "f"))
    messages = (*(ChatMessage(r, t) for r, t in context), ChatMessage("user", prompt))
    params = GenerationParams(max_tokens=16, stop=tuple(stop))
    answer = "".join(chunks)
    events: list[Event] = [
        PromptSubmitted(request_id=rid, conversation_id=cid, user_id="u", model=model,
                        messages=messages, params=params),
        ConversationRenamed(conversation_id=cid, user_id="u", title=title),
        CompletionStarted(request_id=rid, conversation_id=cid, attempt=1, replica_id="x",
                          model=model),
        *(TokenChunk(request_id=rid, conversation_id=cid, attempt=1, seq=i, text=t,
                     token_count=1) for i, t in enumerate(chunks)),
        CompletionFinished(request_id=rid, conversation_id=cid, attempt=1, finish_reason="stop",
                           usage=Usage(3, len(chunks)), text=answer),
        PromptSubmitted(request_id=failed, conversation_id=cid, user_id="u", model=model,
                        messages=(ChatMessage("user", prompt),), params=params),
        CompletionFailed(request_id=failed, conversation_id=cid, attempt=1, error_code="x",
                         message=error, retryable=False),
    ]  # fmt: skip
    decoded = [_roundtrip(e) for e in events]
    first = decoded[0]
    assert isinstance(first, PromptSubmitted) and list(first.params.stop) == stop

    projection = PostgresProjection(settings)
    try:
        await projection.apply(decoded, {}, {})
    finally:
        await projection.close()

    with pg_connect(settings) as conn:
        rows = conn.execute(
            "SELECT id, role, content FROM chatlog.messages WHERE conversation_id = %s"
            " ORDER BY created_at, id",
            (cid,),
        ).fetchall()
        (got_title,) = conn.execute(
            "SELECT title FROM chatlog.conversations WHERE id = %s", (cid,)
        ).fetchone() or (None,)
        completions = dict(
            conn.execute(
                "SELECT request_id, model FROM chatlog.completions WHERE conversation_id = %s",
                (cid,),
            ).fetchall()
        )
        (got_error,) = conn.execute(
            "SELECT error->>'message' FROM chatlog.completions WHERE request_id = %s", (failed,)
        ).fetchone() or (None,)
        got_chunks = [
            t
            for (t,) in conn.execute(
                "SELECT text FROM chatlog.chunks WHERE request_id = %s ORDER BY seq", (rid,)
            ).fetchall()
        ]
    sent = [(r, stored(t)) for r, t in context] + [("user", stored(prompt))]
    in_order = [(r, c) for i, r, c in rows if i.startswith(rid)]
    assert in_order == [*sent, ("assistant", stored(answer))]
    by_id = {i: (r, c) for i, r, c in rows}
    assert by_id[f"{rid}:user"] == ("user", stored(prompt))
    assert by_id[f"{rid}:assistant"] == ("assistant", stored(answer))
    assert [by_id[f"{rid}:ctx{i:03d}"] for i in range(len(context))] == sent[:-1]
    assert by_id[f"{failed}:user"] == ("user", stored(prompt))
    assert got_title == stored(title)
    assert completions == {rid: stored(model), failed: stored(model)}
    assert got_error == stored(error)
    assert got_chunks == [stored(t) for t in chunks]

    search = SearchProjection(settings)
    try:
        docs = await search._documents(await search.connection(), [rid, failed], [cid])
    finally:
        await search.close()
    contents = {d["id"]: (d["content"], d["title"]) for d in docs}
    assert contents[f"{rid}-assistant"] == (stored(answer), stored(title))
    assert contents[f"{rid}-user"] == (stored(prompt), stored(title))
