"""Typed errors of the event contract."""

from __future__ import annotations


class ChatlogError(Exception):
    """Base of every chatlog error."""


class EventDecodeError(ChatlogError):
    """A record could not be decoded. Names where it lives, so an operator can find it."""

    def __init__(
        self, reason: str, *, topic: str | None, partition: int | None, offset: int | None
    ) -> None:
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(f"{reason} (topic={topic} partition={partition} offset={offset})")


class UnknownEventType(EventDecodeError):
    """The `event-type`/`schema-version` headers name no schema we know."""


class CorruptEvent(EventDecodeError):
    """The headers are missing or the Avro body does not match its writer schema."""
