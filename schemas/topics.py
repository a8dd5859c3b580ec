"""Topic names and partition counts (ARCHITECTURE §2). Prefixes isolate tests and tenants."""

from __future__ import annotations

from dataclasses import dataclass

CONVERSATIONS = "chat.conversations"
COMPLETIONS = "chat.completions"
DLQ = "chat.dlq"
DEFAULT_PARTITIONS = 12

ALL_TOPICS: tuple[str, ...] = (CONVERSATIONS, COMPLETIONS, DLQ)


@dataclass(frozen=True)
class Topics:
    """The concrete topic names for one deployment: the architecture's names plus a prefix."""

    prefix: str = ""

    @property
    def conversations(self) -> str:
        return self.prefix + CONVERSATIONS

    @property
    def completions(self) -> str:
        return self.prefix + COMPLETIONS

    @property
    def dlq(self) -> str:
        return self.prefix + DLQ

    def all(self) -> tuple[str, ...]:
        return (self.conversations, self.completions, self.dlq)
