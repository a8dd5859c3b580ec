"""Which partitions of chat.completions this query process's hub reads (its share).

With one query process the hub reads every partition. With N (`CHATLOG_QUERY_INSTANCES`),
instance i (`CHATLOG_QUERY_INSTANCE`) owns the partitions p with p mod N = i, so each hub
reads ~1/N of the chunk records and the read side scales with N (docs/capacity.md: a hub
reading every partition caps the whole system's read side at one process's decode rate).
A request's completions partition is its prompt's partition in chat.conversations (the
replicas produce to the partition their prompt came from), which every hub still reads:
a process knows each request's owner even when it does not read the request's chunks.

A stream that reaches a process that does not own it goes to its owner through the
gateway (`routes.owner`); one the owner cannot take (down) or that came straight to the
process is served by **adopting** the partition: the hub reads it from its live end on,
and the stream catches up from Postgres and Kafka as it does for a request the hub joined
mid-way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Share:
    """Instance `instance` of `instances` query processes."""

    instance: int = 0
    instances: int = 1

    def __post_init__(self) -> None:
        if self.instances < 1 or not 0 <= self.instance < self.instances:
            raise ValueError(
                f"query instance {self.instance} of {self.instances}: set "
                "CHATLOG_QUERY_INSTANCE to 0..CHATLOG_QUERY_INSTANCES-1"
            )

    def owner_of(self, partition: int) -> int:
        """The instance that owns `partition`."""
        return partition % self.instances

    def owns(self, partition: int) -> bool:
        return self.owner_of(partition) == self.instance
