"""Topic names and partition counts (ARCHITECTURE §2). Prefixes isolate tests and tenants."""

from __future__ import annotations

from dataclasses import dataclass

CONVERSATIONS = "chat.conversations"
COMPLETIONS = "chat.completions"
# The durable answers: each attempt's final event (CompletionFinished v2 with its text, or
# CompletionFailed), also written here by the replica. chat.completions' token chunks
# expire; this topic and chat.conversations keep everything (retention.ms=-1), so a
# rebuild reproduces every stored message after the chunks are gone.
ANSWERS = "chat.answers"
DLQ = "chat.dlq"
# Replica health (#14): each replica's ReplicaHeartbeat, keyed by replica_id, compacted so
# only the last beat per replica stays; the command API's breakers and the query API's
# /v1/models read it from the beginning.
REPLICAS = "chat.replicas"
DEFAULT_PARTITIONS = 12

ALL_TOPICS: tuple[str, ...] = (CONVERSATIONS, COMPLETIONS, ANSWERS, DLQ, REPLICAS)


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
    def answers(self) -> str:
        return self.prefix + ANSWERS

    @property
    def dlq(self) -> str:
        return self.prefix + DLQ

    @property
    def replicas(self) -> str:
        return self.prefix + REPLICAS

    def all(self) -> tuple[str, ...]:
        return (self.conversations, self.completions, self.answers, self.dlq, self.replicas)
