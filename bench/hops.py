"""Where a streamed prompt's time to first token goes, hop by hop, from the events' clocks.

Every event carries `occurred_at` (wall clock, ms), and every process of the bench shares
the machine's clock, so one request's path splits into hops without tracing anything:

    client POST sent
      -> PromptSubmitted.occurred_at       accept: HTTP, auth, admission, the event built
      -> CompletionStarted.occurred_at     Kafka append (acks=all) + the replica's fetch
      -> first TokenChunk.occurred_at      the engine's first token (one decode step)
      -> seen by a Kafka consumer here     producer linger + broker + fetch (≈ the hub's)
      -> first frame of a direct stream    hub fold + the query API's SSE (a second client
                                           reading the query API itself, opened as soon
                                           as the command API's response headers name it)
      -> first content chunk at the client the command API's relay (+ the gateway)

`HopRecorder` runs the Kafka consumer in a thread; `Hops` is what the client records.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from infra.settings import InfraSettings
from schemas import CompletionStarted, PromptSubmitted, TokenChunk, decode
from schemas.codec import event_type_of

WANTED = {"PromptSubmitted", "CompletionStarted", "TokenChunk"}
# The hops in path order: (name, from mark, to mark).
HOPS = (
    ("accept (client -> PromptSubmitted)", "sent", "prompt_at"),
    ("Kafka + replica fetch (-> CompletionStarted)", "prompt_at", "started_at"),
    ("engine first token (-> TokenChunk)", "started_at", "chunk_at"),
    ("chunk -> a Kafka consumer", "chunk_at", "chunk_seen"),
    ("hub + query API SSE (-> direct stream)", "chunk_seen", "direct_first"),
    ("relay + gateway (-> client)", "direct_first", "client_first"),
)


@dataclass
class Marks:
    """One request's wall-clock marks (seconds since the epoch); None until seen."""

    sent: float | None = None
    client_first: float | None = None
    direct_first: float | None = None
    prompt_at: float | None = None
    started_at: float | None = None
    chunk_at: float | None = None
    chunk_seen: float | None = None


@dataclass
class HopRecorder:
    """Reads `chat.conversations` and `chat.completions` from their live end and records
    each request's event times into `marks` (the bench fills the client's own)."""

    settings: InfraSettings
    marks: dict[str, Marks] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def mark(self, request_id: str) -> Marks:
        return self.marks.setdefault(request_id, Marks())

    def start(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": "bench-hops",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
            }
        )
        topics = (self.settings.topics.conversations, self.settings.topics.completions)
        parts = [
            TopicPartition(t, p, OFFSET_END)
            for t in topics
            for p in consumer.list_topics(t, timeout=10).topics[t].partitions
        ]
        consumer.assign(parts)
        self._thread = threading.Thread(target=self._run, args=(consumer,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                for msg in consumer.consume(500, timeout=0.05):
                    seen = time.time()
                    if msg.error() or event_type_of(msg.headers()) not in WANTED:
                        continue
                    self._record(decode(msg.value(), msg.headers()), seen)
        finally:
            consumer.close()

    def _record(self, event: object, seen: float) -> None:
        if isinstance(event, PromptSubmitted):
            self.mark(event.request_id).prompt_at = event.occurred_at.timestamp()
        elif isinstance(event, CompletionStarted) and event.attempt == 1:
            self.mark(event.request_id).started_at = event.occurred_at.timestamp()
        elif isinstance(event, TokenChunk) and event.attempt == 1 and event.seq == 0:
            m = self.mark(event.request_id)
            m.chunk_at, m.chunk_seen = event.occurred_at.timestamp(), seen


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def hop_table(marks: list[Marks]) -> list[dict[str, float | str]]:
    """p50 / p99 / mean of each hop over the requests that have both of its marks."""
    rows: list[dict[str, float | str]] = []
    for name, start, end in HOPS:
        values = [
            (e - s) * 1000
            for m in marks
            if (s := getattr(m, start)) is not None and (e := getattr(m, end)) is not None
        ]
        mean = sum(values) / len(values) if values else float("nan")
        rows.append(
            {
                "hop": name,
                "n": len(values),
                "p50": pct(values, 50),
                "p99": pct(values, 99),
                "mean": mean,
            }
        )
    return rows
