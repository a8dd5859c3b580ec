"""Does the log still hold everything a rebuild folds? Checked before a rebuild switches.

chat.conversations and chat.answers keep every record (retention.ms=-1): a partition of
them that no longer starts at offset 0 has lost facts that no other log holds, and a
rebuild from it would silently drop conversations or answers. chat.completions may start
later by design (its token chunks expire); what it held is still in the log when every
prompt older than its first retained record has its outcome (the final in chat.answers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from processors.errors import RebuildRefused
from processors.fold import TERMINAL
from processors.pg_store import checked_schema
from processors.settings import ProcessorSettings

TP = tuple[str, int]
SHOWN = 10  # missing prompts named in the refusal


@dataclass(frozen=True)
class LogStart:
    """Where the logs start. `completions_since_ms`: prompts older than this (epoch ms) may
    have lost their chunks, so they need their outcome from chat.answers; None: nothing
    of chat.completions was deleted."""

    completions_since_ms: int | None


async def check_log_start(settings: ProcessorSettings) -> LogStart:
    """Refuse (RebuildRefused) when chat.conversations or chat.answers lost its beginning."""
    t = settings.topics
    consumer = AIOKafkaConsumer(**settings.aiokafka_options())
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        topics = [t.conversations, t.answers, t.completions]
        tps = [TopicPartition(n, p) for n in topics for p in cluster.partitions_for_topic(n) or ()]
        starts = await consumer.beginning_offsets(tps)
        truncated = [tp for tp in tps if starts[tp] > 0]
        lost = [tp for tp in truncated if tp.topic != t.completions]
        if lost:
            names = ", ".join(f"{tp.topic}[{tp.partition}] from offset {starts[tp]}" for tp in lost)
            raise RebuildRefused(
                f"the log no longer starts at its beginning: {names}. A rebuild from it "
                f"would lose what was deleted; the live read model was kept."
            )
        if not truncated:
            return LogStart(None)
        # The first retained record of each truncated partition, with its timestamp.
        found = await consumer.offsets_for_times({tp: 0 for tp in truncated})
    finally:
        await consumer.stop()
    now_ms = int(time.time() * 1000)
    # A partition emptied whole says no time: then every prompt so far needs its answer.
    return LogStart(max(f.timestamp if f else now_ms for f in found.values()))


async def check_outcomes(conn: psycopg.AsyncConnection[Any], schema: str, start: LogStart) -> None:
    """Refuse when a prompt folded into `schema` lacks the outcome that chunks expired from."""
    if start.completions_since_ms is None:
        return
    s = checked_schema(schema)
    cur = await conn.execute(
        f"SELECT request_id, conversation_id FROM {s}.completions"
        f" WHERE user_id <> '' AND status <> ALL(%s)"
        f"   AND created_at < to_timestamp(%s / 1000.0) ORDER BY created_at, request_id",
        (sorted(TERMINAL), start.completions_since_ms),
    )
    missing = await cur.fetchall()
    if missing:
        names = ", ".join(f"{r} (conversation {c})" for r, c in missing[:SHOWN])
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise RebuildRefused(
            f"{len(missing)} prompts have no outcome in the log (chat.completions was deleted"
            f" up to its first retained record, and chat.answers holds no final for them):"
            f" {names}{more}. The live read model was kept."
        )
