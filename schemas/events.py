"""Typed event classes: the only shape of an event the rest of chatlog handles.

Every event is a frozen dataclass named in the past tense. Conversion to and from Avro
dicts happens only in `schemas.codec`, at the Kafka boundary (ARCHITECTURE §3).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, Literal

FinishReason = Literal["stop", "length", "cancelled"]
Branch = Literal["regenerate", "edit"]


def new_event_id() -> str:
    """A fresh event id (uuid4 as text)."""
    return str(uuid.uuid4())


def utc_now() -> datetime:
    """Now, millisecond precision, UTC: what timestamp-millis can carry losslessly."""
    now = datetime.now(UTC)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event. `key` is the Kafka key: every event is keyed by conversation."""

    event_type: ClassVar[str] = ""
    event_id: str = field(default_factory=new_event_id)
    occurred_at: datetime = field(default_factory=utc_now)
    traceparent: str | None = None

    @property
    def key(self) -> str:
        conversation_id: str = getattr(self, "conversation_id")  # noqa: B009 - every event has one
        return conversation_id


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, kw_only=True)
class PromptSubmitted(Event):
    """A user asked for a completion; `messages` is the full context the model sees.

    The conversation is a tree of requests: `parent_request_id` is the request whose answer
    this prompt follows (None: a first turn). v2 adds `branch`: None for a new turn,
    "regenerate" for another answer to the user message of `sibling_of` (the first request
    that asked it), "edit" for a new user message beside the one of `sibling_of`; both keep
    `sibling_of`'s parent. None in v1 records, which are all new turns.
    """

    event_type: ClassVar[str] = "PromptSubmitted"
    request_id: str
    conversation_id: str
    user_id: str
    model: str
    messages: tuple[ChatMessage, ...]
    params: GenerationParams
    parent_request_id: str | None = None
    idempotency_key: str | None = None
    branch: Branch | None = None
    sibling_of: str | None = None


@dataclass(frozen=True, kw_only=True)
class CancelRequested(Event):
    event_type: ClassVar[str] = "CancelRequested"
    request_id: str
    conversation_id: str
    user_id: str


@dataclass(frozen=True, kw_only=True)
class ConversationRenamed(Event):
    event_type: ClassVar[str] = "ConversationRenamed"
    conversation_id: str
    user_id: str
    title: str


@dataclass(frozen=True, kw_only=True)
class ConversationDeleted(Event):
    event_type: ClassVar[str] = "ConversationDeleted"
    conversation_id: str
    user_id: str


@dataclass(frozen=True, kw_only=True)
class BranchSwitched(Event):
    """The user chose the current branch of the conversation's tree: its leaf `request_id`.

    An event (not a read-model flag) so a replay or rebuild reproduces the choice."""

    event_type: ClassVar[str] = "BranchSwitched"
    conversation_id: str
    user_id: str
    request_id: str


@dataclass(frozen=True, kw_only=True)
class CompletionStarted(Event):
    event_type: ClassVar[str] = "CompletionStarted"
    request_id: str
    conversation_id: str
    attempt: int
    replica_id: str
    model: str


@dataclass(frozen=True, kw_only=True)
class TokenChunk(Event):
    """One or more tokens; `seq` counts 0, 1, 2… within one attempt."""

    event_type: ClassVar[str] = "TokenChunk"
    request_id: str
    conversation_id: str
    attempt: int
    seq: int
    text: str
    token_count: int


@dataclass(frozen=True, kw_only=True)
class CompletionFinished(Event):
    """An attempt ended; `text` (v2) is its whole answer, so the log keeps the answer after
    its TokenChunks expire. None only in records written before v2."""

    event_type: ClassVar[str] = "CompletionFinished"
    request_id: str
    conversation_id: str
    attempt: int
    finish_reason: FinishReason
    usage: Usage
    ttft_ms: float | None = None
    text: str | None = None


@dataclass(frozen=True, kw_only=True)
class CompletionFailed(Event):
    event_type: ClassVar[str] = "CompletionFailed"
    request_id: str
    conversation_id: str
    attempt: int
    error_code: str
    message: str
    retryable: bool


@dataclass(frozen=True, kw_only=True)
class ReplicaHeartbeat(Event):
    """A replica's beat on chat.replicas (compacted): keyed by replica, not conversation,
    so the topic keeps each replica's last beat and a reader starting late sees them all."""

    event_type: ClassVar[str] = "ReplicaHeartbeat"
    replica_id: str
    model: str
    state: str  # "serving" | "starting" | "stopped"
    running: int
    waiting: int
    interval_ms: int
    ttft_ms: float | None = None

    @property
    def key(self) -> str:
        return self.replica_id


ConversationEvent = (
    PromptSubmitted | CancelRequested | ConversationRenamed | ConversationDeleted | BranchSwitched
)
CompletionEvent = CompletionStarted | TokenChunk | CompletionFinished | CompletionFailed
AnyEvent = ConversationEvent | CompletionEvent

EVENT_CLASSES: dict[str, type[Event]] = {
    cls.event_type: cls
    for cls in (
        PromptSubmitted,
        CancelRequested,
        ConversationRenamed,
        ConversationDeleted,
        BranchSwitched,
        CompletionStarted,
        TokenChunk,
        CompletionFinished,
        CompletionFailed,
        ReplicaHeartbeat,
    )
}
