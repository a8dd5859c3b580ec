"""The Postgres projection's fold: a batch of events applied to in-memory row state.

Pure code (no I/O): `pg_store` loads the rows a batch touches, `fold_batch` applies the
events in log order, `pg_store` writes the result back. Because every row the fold needs is
loaded exactly, the fold is idempotent on (request_id, attempt, seq): a redelivered chunk
has `seq <= last_seq` and is ignored, a redelivered prompt finds its request already
prompted, a redelivered rename or prompt older than the current one loses on time.

The two topics are read independently, so a request's completion events may be folded
before its PromptSubmitted (always so in a rebuild that reads chat.completions faster).
Every field therefore merges order-independently across the topics: completion events
create the request's rows with placeholders that the prompt fills in, the conversation's
`updated_at` is a maximum, and a deleted conversation is a tombstone that filters every
event of it, before or after the delete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from schemas.events import (
    BranchSwitched,
    CancelRequested,
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    ConversationDeleted,
    ConversationRenamed,
    Event,
    PromptSubmitted,
    TokenChunk,
)

TERMINAL = frozenset({"finished", "cancelled", "failed"})
ASSISTANT_AFTER_USER = timedelta(milliseconds=1)
CONTEXT_STEP = timedelta(microseconds=1)  # between a first prompt's context messages

ChunkKey = tuple[int, int]  # (attempt, seq)


@dataclass
class RequestRow:
    """One request: its `completions` row and its assistant `messages` row together.

    `user_id == ""` marks a request whose PromptSubmitted has not been folded yet.
    """

    request_id: str
    conversation_id: str
    user_id: str
    model: str
    status: str
    attempt: int
    last_seq: int
    tokens: int
    created_at: datetime
    updated_at: datetime
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    ttft_ms: float | None = None
    error: dict[str, Any] | None = None
    finished_at: datetime | None = None
    message_created_at: datetime | None = None
    # Its place in the conversation's tree (see 004_tree.sql); None until prompted.
    parent_request_id: str | None = None
    origin_request_id: str | None = None
    branch: str | None = None
    # What the batch changes (written by pg_store):
    dirty: bool = False
    reset: bool = False  # content restarts (a higher attempt)
    appended: list[str] = field(default_factory=list)
    new_chunks: list[tuple[int, int, str, int]] = field(default_factory=list)
    drop_chunks_below: int | None = None
    held: dict[ChunkKey, tuple[str, int]] = field(default_factory=dict)
    held_dirty: bool = False
    # The prompt's messages to store, (id, role, content, created_at): the last one, or the
    # whole context of a first prompt.
    user_messages: list[tuple[str, str, str, datetime]] = field(default_factory=list)

    @property
    def prompted(self) -> bool:
        return self.user_id != ""

    @property
    def final(self) -> bool:
        """The current attempt has ended: its stored answer no longer changes."""
        return self.status in TERMINAL


@dataclass
class ConversationRow:
    """One `conversations` row; `exists` is False until its first PromptSubmitted."""

    id: str
    exists: bool = False
    user_id: str = ""
    title: str | None = None
    title_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_request_id: str | None = None
    last_request_at: datetime | None = None
    finished_before: datetime | None = None  # newest finish folded while it did not exist
    current_request_id: str | None = None  # the current branch's leaf
    current_at: datetime | None = None
    dirty: bool = False


@dataclass
class FoldState:
    """Everything one batch reads and writes. Loaded by pg_store, folded here."""

    requests: dict[str, RequestRow] = field(default_factory=dict)
    conversations: dict[str, ConversationRow] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)  # tombstones (stored and new)
    newly_deleted: dict[str, datetime] = field(default_factory=dict)


def _max(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def fold_batch(state: FoldState, events: list[Event]) -> FoldState:
    """Apply `events` (in log order per partition) to `state`; returns it for chaining."""
    for event in events:
        if isinstance(event, ConversationDeleted) and event.conversation_id not in state.deleted:
            state.deleted.add(event.conversation_id)
            state.newly_deleted[event.conversation_id] = event.occurred_at
    for event in events:
        if event.key in state.deleted:
            continue  # erased: the tombstone wins over events before and after the delete
        _fold_one(state, event)
    return state


def _fold_one(state: FoldState, event: Event) -> None:
    if isinstance(event, PromptSubmitted):
        _prompt(state, event)
    elif isinstance(event, ConversationRenamed):
        _rename(state, event)
    elif isinstance(event, BranchSwitched):
        _switch(state, event)
    elif isinstance(event, CompletionStarted | TokenChunk | CompletionFinished | CompletionFailed):
        _completion(state, event)
    elif isinstance(event, CancelRequested):
        pass  # the replica answers with CompletionFinished(cancelled): that is the fact we fold


def conversation(state: FoldState, conversation_id: str) -> ConversationRow:
    """The conversation's row state (a not-yet-existing one when it was not loaded)."""
    row = state.conversations.get(conversation_id)
    if row is None:
        row = state.conversations[conversation_id] = ConversationRow(conversation_id)
    return row


def request(state: FoldState, event: Event, request_id: str) -> RequestRow:
    """The request's row state; a placeholder (not prompted) when it is new."""
    row = state.requests.get(request_id)
    if row is None:
        row = state.requests[request_id] = RequestRow(
            request_id=request_id,
            conversation_id=event.key,
            user_id="",
            model=getattr(event, "model", ""),
            status="queued",
            attempt=0,
            last_seq=-1,
            tokens=0,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            message_created_at=event.occurred_at,
            dirty=True,
        )
    return row


def _prompt(state: FoldState, p: PromptSubmitted) -> None:
    conv = conversation(state, p.conversation_id)
    first = not conv.exists
    parent = p.parent_request_id
    if parent is None and p.branch is None and not first:
        parent = conv.last_request_id  # a continuation that did not name its parent
    if first:
        conv.exists = True
        conv.user_id = p.user_id
        conv.created_at = p.occurred_at
        conv.updated_at = _max(p.occurred_at, conv.finished_before)
        conv.last_request_id, conv.last_request_at = p.request_id, p.occurred_at
    else:
        conv.updated_at = _max(conv.updated_at, p.occurred_at)
        if conv.last_request_at is None or p.occurred_at >= conv.last_request_at:
            conv.last_request_id, conv.last_request_at = p.request_id, p.occurred_at
    if conv.current_at is None or p.occurred_at >= conv.current_at:
        conv.current_request_id, conv.current_at = p.request_id, p.occurred_at
    conv.dirty = True

    req = request(state, p, p.request_id)
    if req.prompted:
        return  # a redelivered prompt
    req.parent_request_id, req.branch = parent, p.branch
    regenerated = p.branch == "regenerate" and p.sibling_of is not None
    req.origin_request_id = p.sibling_of if regenerated else p.request_id
    req.user_id, req.model = p.user_id, p.model
    req.conversation_id = p.conversation_id
    req.created_at = p.occurred_at
    req.message_created_at = p.occurred_at + ASSISTANT_AFTER_USER
    req.updated_at = max(req.updated_at, p.occurred_at)
    req.user_messages = _prompt_messages(p, root=parent is None)
    req.dirty = True


def _prompt_messages(p: PromptSubmitted, *, root: bool) -> list[tuple[str, str, str, datetime]]:
    """(id, role, content, created_at) of the messages a prompt adds to the conversation.

    A continued turn's context is the stored history plus one new message: only that one
    is new. A first prompt's context is the client's own conversation (`[system, user,
    assistant, user]` in OpenAI usage): all of it is history, each message a microsecond
    before the next, so the read model orders them as sent and the last one keeps the
    prompt's own time. The new message is `<request_id>:user` (as it always was); the
    context before it is `<request_id>:ctx<i>` under its own role. A root of the tree (the
    first prompt, or a regenerate or edit of one) has no parent to take its history from,
    so it stores its whole context like a first prompt.
    """
    rid = p.request_id
    last = p.messages[-1].content if p.messages else ""
    context = p.messages[:-1] if root else ()
    n = len(context)
    return [
        *(
            (f"{rid}:ctx{i:03d}", m.role, m.content, p.occurred_at - CONTEXT_STEP * (n - i))
            for i, m in enumerate(context)
        ),
        (f"{rid}:user", "user", last, p.occurred_at),
    ]


def _rename(state: FoldState, r: ConversationRenamed) -> None:
    conv = conversation(state, r.conversation_id)
    if not conv.exists:
        return  # nothing to rename yet (same topic as its prompts: deterministic)
    if conv.title_at is None or r.occurred_at >= conv.title_at:
        conv.title, conv.title_at = r.title, r.occurred_at
    conv.updated_at = _max(conv.updated_at, r.occurred_at)
    conv.dirty = True


def _switch(state: FoldState, b: BranchSwitched) -> None:
    """The user's choice of leaf; the command API checked it names a request of the
    conversation. Like a prompt it wins on time, so a redelivered older switch loses."""
    conv = conversation(state, b.conversation_id)
    if not conv.exists:
        return  # same topic as its prompts: a switch before any prompt names nothing
    if conv.current_at is None or b.occurred_at >= conv.current_at:
        conv.current_request_id, conv.current_at = b.request_id, b.occurred_at
        conv.dirty = True


def _restart(req: RequestRow, attempt: int) -> None:
    """A higher attempt wins: its text starts empty and the lower attempts' chunks go."""
    req.attempt, req.last_seq, req.tokens = attempt, -1, 0
    req.reset, req.appended, req.new_chunks = True, [], []
    req.drop_chunks_below = attempt
    if req.held:
        req.held = {k: v for k, v in req.held.items() if k[0] >= attempt}
        req.held_dirty = True
    req.finish_reason = req.usage = req.ttft_ms = req.error = req.finished_at = None
    req.status = "streaming"


def _completion(
    state: FoldState,
    e: CompletionStarted | TokenChunk | CompletionFinished | CompletionFailed,
) -> None:
    req = request(state, e, e.request_id)
    if e.attempt < req.attempt:
        return  # a lower attempt lost
    if e.attempt > req.attempt:
        _restart(req, e.attempt)
    if isinstance(e, TokenChunk):
        _chunk(req, e)  # kept for resumed streams even after the final: see _chunk
        return
    if req.final:
        return  # the attempt's final came first (from chat.answers) or this is a duplicate
    req.updated_at = max(req.updated_at, e.occurred_at)
    req.dirty = True
    if isinstance(e, CompletionStarted):
        if not req.prompted:
            req.model = e.model
        if req.status == "queued":
            req.status = "streaming"
    else:
        _terminal(state, req, e)


def _chunk(req: RequestRow, c: TokenChunk) -> None:
    """Append a chunk in seq order. After its attempt's final the chunk still joins the
    `chunks` table (a finished stream resumes from there) but never the answer, whose text
    the final fixed: so a chunk read after the final, or never (expired), changes nothing."""
    if c.seq <= req.last_seq:
        return  # a duplicate
    req.dirty = True
    if not req.final:
        req.updated_at = max(req.updated_at, c.occurred_at)
    if c.seq > req.last_seq + 1:
        if (c.attempt, c.seq) not in req.held:
            req.held[(c.attempt, c.seq)] = (c.text, c.token_count)
            req.held_dirty = True
        return  # a gap: hold it until the missing chunk arrives
    _append(req, c.attempt, c.seq, c.text, c.token_count)
    while (req.attempt, req.last_seq + 1) in req.held:
        text, tokens = req.held.pop((req.attempt, req.last_seq + 1))
        req.held_dirty = True
        _append(req, req.attempt, req.last_seq + 1, text, tokens)
    if req.status == "queued":
        req.status = "streaming"


def _append(req: RequestRow, attempt: int, seq: int, text: str, tokens: int) -> None:
    req.new_chunks.append((attempt, seq, text, tokens))
    req.last_seq = seq
    if not req.final:
        req.appended.append(text)
        req.tokens += tokens


def _terminal(state: FoldState, req: RequestRow, e: CompletionFinished | CompletionFailed) -> None:
    if isinstance(e, CompletionFinished):
        req.status = "cancelled" if e.finish_reason == "cancelled" else "finished"
        req.finish_reason = e.finish_reason
        req.usage = {
            "prompt_tokens": e.usage.prompt_tokens,
            "completion_tokens": e.usage.completion_tokens,
        }
        req.ttft_ms = e.ttft_ms
        if e.text is not None:  # v2: the attempt's whole answer, whatever chunks we have
            req.reset, req.appended = True, [e.text]
            req.tokens = e.usage.completion_tokens
    else:
        req.status = "failed"
        req.error = {"code": e.error_code, "message": e.message, "retryable": e.retryable}
    req.finished_at = e.occurred_at
    conv = conversation(state, e.conversation_id)
    if conv.exists:
        conv.updated_at = _max(conv.updated_at, e.occurred_at)
        conv.dirty = True
    else:
        conv.finished_before = _max(conv.finished_before, e.occurred_at)
