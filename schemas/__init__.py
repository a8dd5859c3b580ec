"""The shared contract: events, codec, topic names, read-model DDL, search settings."""

from schemas.codec import decode, encode
from schemas.errors import ChatlogError, CorruptEvent, EventDecodeError, UnknownEventType
from schemas.events import (
    AnyEvent,
    BranchSwitched,
    CancelRequested,
    ChatMessage,
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    ConversationDeleted,
    ConversationRenamed,
    Event,
    GenerationParams,
    PromptSubmitted,
    ReplicaHeartbeat,
    TokenChunk,
    Usage,
)
from schemas.topics import Topics

__all__ = [
    "AnyEvent",
    "BranchSwitched",
    "CancelRequested",
    "ChatMessage",
    "ChatlogError",
    "CompletionFailed",
    "CompletionFinished",
    "CompletionStarted",
    "ConversationDeleted",
    "ConversationRenamed",
    "CorruptEvent",
    "Event",
    "EventDecodeError",
    "GenerationParams",
    "PromptSubmitted",
    "ReplicaHeartbeat",
    "TokenChunk",
    "Topics",
    "UnknownEventType",
    "Usage",
    "decode",
    "encode",
]
