"""Which offsets of chat.conversations may be committed: never past an unfinished prompt.

Every consumed record is tracked; non-prompt records and skipped prompts are done at
once, a prompt is done when its final event is acknowledged by Kafka. The committable
offset of a partition is its lowest unfinished offset, or one past the last consumed
record when nothing is unfinished. A replica that dies therefore gets every unfinished
prompt redelivered, and some finished ones too (which the attempt ledger then skips).
"""

from __future__ import annotations

import heapq


class PartitionOffsets:
    """Unfinished offsets of one partition (a heap with lazy deletion)."""

    def __init__(self) -> None:
        self._heap: list[int] = []
        self._done: set[int] = set()
        self._next: int | None = None
        self.committed: int | None = None

    def consumed(self, offset: int, *, done: bool = False) -> None:
        self._next = offset + 1 if self._next is None else max(self._next, offset + 1)
        if not done:
            heapq.heappush(self._heap, offset)

    def finish(self, offset: int) -> None:
        self._done.add(offset)
        while self._heap and self._heap[0] in self._done:
            self._done.discard(heapq.heappop(self._heap))

    @property
    def unfinished(self) -> int:
        return len(self._heap) - len(self._done)

    def committable(self) -> int | None:
        return self._heap[0] if self._heap else self._next


class OffsetTracker:
    """PartitionOffsets per assigned partition, and what changed since the last commit."""

    def __init__(self) -> None:
        self._parts: dict[int, PartitionOffsets] = {}

    def assign(self, partitions: list[int]) -> None:
        for p in partitions:
            self._parts.setdefault(p, PartitionOffsets())

    def revoke(self, partitions: list[int]) -> None:
        for p in partitions:
            self._parts.pop(p, None)

    def consumed(self, partition: int, offset: int, *, done: bool = False) -> None:
        self._parts.setdefault(partition, PartitionOffsets()).consumed(offset, done=done)

    def finish(self, partition: int, offset: int) -> None:
        if partition in self._parts:  # revoked meanwhile: the new owner decides
            self._parts[partition].finish(offset)

    def pending_commits(self) -> dict[int, int]:
        """Partition -> offset to commit, for partitions whose committable offset moved."""
        out: dict[int, int] = {}
        for p, po in self._parts.items():
            off = po.committable()
            if off is not None and off != po.committed:
                out[p] = off
        return out

    def mark_committed(self, commits: dict[int, int]) -> None:
        for p, off in commits.items():
            if p in self._parts:
                self._parts[p].committed = off
