"""What the batch loop (`processors.runner`) runs: a projection, and what it reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from processors.settings import ProcessorSettings
from schemas.events import Event

TP = tuple[str, int]


def projection_topics(settings: ProcessorSettings) -> list[str]:
    """The logs every projection folds: prompts, streams, and the durable answers."""
    t = settings.topics
    return [t.conversations, t.completions, t.answers]


class Projection(Protocol):
    """A read model fed by the loop. `apply` is one transaction: rows plus checkpoints."""

    name: str
    batch_max_events: int  # one fetch, one fold, one transaction
    batch_wait_ms: int  # how long a fetch waits to fill a batch
    event_types: frozenset[str] | None  # the only types it reads (by header); None = all

    async def stored_positions(self) -> dict[TP, int]:
        """The stored checkpoints (topic, partition) -> next offset."""

    async def apply(
        self, events: list[Event], positions: dict[TP, int], expected: dict[TP, int | None]
    ) -> None:
        """Fold `events`, store `positions`; raise Fenced if the stored ones are not `expected`."""

    async def close(self) -> None:
        """Release connections."""


@dataclass
class Progress:
    events: int
    rate: float  # events/s over the last interval
    lag: int
