"""The usage meter as faust means it: an agent, faust tables, their changelog topics.

An experiment for issue #18 item 1, run beside the Postgres-checkpoint meter
(`processors.usage.projection`), not instead of it: `docs/usage_faust.md` has the runs
and the verdict. One agent reads chat.conversations and chat.answers (both keyed by
conversation, so co-partitioned: a conversation's prompt and finals meet in the same
partition number) in batches (`take_events`, acked after the batch), and keeps:

- table `usage-requests`: request_id -> its meter row (the same `fold_usage` as the
  Postgres meter), written to the changelog partition of the event's source partition;
- table `usage-daily`: "<partition>|user|model|day" -> [requests, prompt tokens, completion
  tokens, cancelled, failed], faust's counting table, moved by each row's change (the
  partition is in the key because a day's requests come from many partitions, and a key
  must live in exactly one changelog partition to recover to one value).

Each batch's touched rows (all of them, changed or not: a batch redelivered after a crash
folds to no change on the recovered table, but its Postgres write may be the one that was
lost) are upserted into `chatlog.usage_requests`, the rows the API reads, before the batch
is acked; faust flushes the changelog before it commits the source offsets.
`python -m processors.usage.faust_meter` runs it as its own faust worker.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import date
from typing import Any

import faust

from processors.pg_session import PgSession
from processors.settings import ProcessorSettings
from processors.usage.fold import EVENT_TYPES, UsageRow, fold_usage
from processors.usage.projection import upsert_rows
from schemas.codec import decode, event_type_of
from schemas.errors import EventDecodeError
from schemas.events import Event

log = logging.getLogger(__name__)
REQUESTS_TABLE = "usage-requests"
DAILY_TABLE = "usage-daily"
Counts = list[int]  # requests, prompt_tokens, completion_tokens, cancelled, failed


class MeterSettings(ProcessorSettings):
    """The faust meter's knobs (`CHATLOG_METER_*`) on top of the processors' settings."""

    meter_app_id: str = "chatlog-usage-meter"  # + topic prefix: group id, changelog names
    meter_guarantee: str = "at_least_once"  # faust's processing_guarantee (or exactly_once)
    meter_batch: int = 500  # events per take_events batch = one Postgres write (1: no take)
    meter_within_s: float = 0.05
    meter_commit_interval_s: float = 1.0  # faust's broker_commit_interval

    @property
    def meter_app_name(self) -> str:
        return f"{self.topic_prefix}{self.meter_app_id}"

    def changelog_topic(self, table: str) -> str:
        """faust's name for a table's changelog topic."""
        return f"{self.meter_app_name}-{table}-changelog"


def row_to_json(row: UsageRow) -> list[Any]:
    return [row.user_id, row.model, row.day.isoformat() if row.day else None, row.attempt,
            row.outcome, row.prompt_tokens, row.completion_tokens]  # fmt: skip


def row_from_json(request_id: str, v: Sequence[Any]) -> UsageRow:
    day = date.fromisoformat(v[2]) if v[2] else None
    return UsageRow(request_id, v[0], v[1], day, v[3], v[4], v[5], v[6])


def contribution(row: UsageRow) -> tuple[str, Counts] | None:
    """What a row adds to its day's counters (None: its prompt is not read yet)."""
    if row.user_id is None or row.day is None:
        return None
    key = f"{row.user_id}|{row.model}|{row.day.isoformat()}"
    return key, [1, row.prompt_tokens, row.completion_tokens,
                 int(row.outcome == "cancelled"), int(row.outcome == "failed")]  # fmt: skip


class FaustMeter:
    """The agent's body: fold a batch over the tables, then project its rows to Postgres."""

    def __init__(self, settings: MeterSettings, app: Any, requests: Any, daily: Any) -> None:
        self.app = app
        self.requests = requests
        self.daily = daily
        self._session = PgSession(settings.postgres_url)
        self._started = False

    async def apply(self, batch: Sequence[Any]) -> None:
        events: list[Event] = []
        partition: dict[str, int] = {}
        for ev in batch:
            m = ev.message
            if not self._started:  # the evidence that a restart resumes, not re-reads
                self._started = True
                log.info("usage meter: first batch at %s[%d]@%d", m.topic, m.partition, m.offset)
            if self.app.in_recovery:  # faust should hold the streams until tables recover
                log.warning("usage meter: a batch while the tables recover (%s[%d]@%d)",
                            m.topic, m.partition, m.offset)  # fmt: skip
            if event_type_of(m.headers) not in EVENT_TYPES:
                continue
            try:
                e = decode(m.value, m.headers, topic=m.topic, partition=m.partition,
                           offset=m.offset)  # fmt: skip
            except EventDecodeError:
                log.exception("usage meter: skipping an undecodable record")
                continue
            events.append(e)
            partition[e.request_id] = m.partition  # type: ignore[attr-defined]
        if not events:
            return
        rows: dict[str, UsageRow] = {}
        before: dict[str, tuple[str, Counts] | None] = {}
        for rid in partition:
            stored = self.requests.get(rid)
            if stored is not None:
                rows[rid] = row_from_json(rid, stored)
                before[rid] = contribution(rows[rid])
        fold_usage(rows, events)
        if orphans := [r for r in rows.values() if r.user_id is None]:  # evidence, see docs
            log.info("usage meter: %d rows without their prompt yet, e.g. %s (partition %d)",
                     len(orphans), orphans[0].request_id, partition[orphans[0].request_id])  # fmt: skip
        for rid, row in rows.items():
            if row.dirty:
                self._set(self.requests, partition[rid], rid, row_to_json(row))
                self._move_daily(partition[rid], before.get(rid), contribution(row))
        await upsert_rows(await self._session.connection(), list(rows.values()))

    def _move_daily(
        self, p: int, old: tuple[str, Counts] | None, new: tuple[str, Counts] | None
    ) -> None:
        if old == new:
            return
        for item, sign in ((old, -1), (new, 1)):
            if item is not None:
                key = f"{p}|{item[0]}"
                current = list(self.daily.get(key) or [0, 0, 0, 0, 0])
                self._set(self.daily, p, key, [a + sign * b for a, b in zip(current, item[1],
                                                                            strict=True)])  # fmt: skip

    @staticmethod
    def _set(table: Any, partition: int, key: str, value: Any) -> None:
        """`table[key] = value` for a batch: faust's `__setitem__` takes the changelog
        partition from the current event, which in a batch is not this row's event."""
        table.data[key] = value
        table.send_changelog(partition, key, value)

    async def close(self) -> None:
        await self._session.close()


def create_meter_app(settings: MeterSettings) -> faust.App:
    """The meter's own faust app: its group, its tables, its changelog topics."""
    app = faust.App(
        settings.meter_app_name,
        broker=f"kafka://{settings.kafka_bootstrap}",
        datadir=str(settings.home / "usage-meter"),
        store="memory://",  # recovery = reading the (compacted) changelog, not the log
        processing_guarantee=settings.meter_guarantee,
        topic_partitions=settings.partitions,  # the changelogs mirror the source partitions
        topic_disable_leader=True,
        web_enabled=False,
        broker_commit_interval=settings.meter_commit_interval_s,
        # the broker's minimum: a SIGKILLed member blocks the next one's join until it expires
        broker_session_timeout=6.0,
        broker_heartbeat_interval=2.0,
    )
    t = settings.topics
    source = app.topic(t.conversations, t.answers, key_serializer="raw", value_serializer="raw")
    # no key/value types: faust's tables then (de)serialise keys and values as JSON
    requests, daily = (
        app.Table(name, default=None, partitions=settings.partitions)
        for name in (REQUESTS_TABLE, DAILY_TABLE)
    )
    meter = FaustMeter(settings, app, requests, daily)

    @app.agent(source, concurrency=1)
    async def usage_meter(stream: Any) -> None:
        if settings.meter_batch <= 1:  # one event at a time, faust's own acking: no take()
            async for event in stream.events():
                await meter.apply([event])
            return
        async for batch in stream.take_events(settings.meter_batch, within=settings.meter_within_s):
            await meter.apply(batch)

    return app


def main() -> int:
    settings = MeterSettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from infra.clients import ensure_topics

    ensure_topics(settings)
    worker = faust.Worker(create_meter_app(settings), loglevel="INFO", quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
