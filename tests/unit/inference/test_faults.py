"""A replica's loops against faults of Kafka, with in-memory stand-ins for its clients:
the offset commit failing in a rebalance, the ledger scan not finishing in time."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import CommitFailedError, KafkaConnectionError

from inference.ledger import AttemptLedger, LedgerUnavailable, scan_partitions
from inference.scripted import ScriptedEngine
from inference.settings import InferenceSettings
from inference.worker import ReplicaWorker
from schemas.events import CompletionFinished, Usage
from tests.unit.inference.test_scheduler import until


class FailingCommits:
    """The commit side of AIOKafkaConsumer: the first `failures` commits raise."""

    def __init__(self, failures: list[Exception]):
        self.failures = failures
        self.committed: list[dict[int, int]] = []

    async def commit(self, offsets):
        if self.failures:
            raise self.failures.pop(0)
        self.committed.append({tp.partition: o.offset for tp, o in offsets.items()})


async def test_commit_loop_survives_commit_failures_and_commits_at_a_later_beat():
    settings = InferenceSettings(engine="scripted", models="scripted-echo", commit_interval_ms=1)
    w = ReplicaWorker(settings, ScriptedEngine())
    fake = FailingCommits(
        [CommitFailedError("group rebalanced"), KafkaConnectionError("broker away")]
    )
    w._consumer = fake  # type: ignore[assignment]
    w.offsets.assign([0])
    w.offsets.consumed(0, 5, done=True)
    loop = asyncio.create_task(w._commit_loop())
    try:
        await until(lambda: fake.committed or loop.done())
        assert not loop.done()
        assert fake.committed == [{0: 6}]
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await w.publisher.stop()


class SilentReader:
    """The calls scan_partitions makes on its reader; the records never arrive."""

    async def end_offsets(self, tps):
        return {tp: 10 for tp in tps}

    async def beginning_offsets(self, tps):
        return {tp: 0 for tp in tps}

    def assign(self, tps):
        pass

    def seek(self, tp, offset):
        pass

    async def getmany(self, *tps, timeout_ms, max_records=None):
        await asyncio.sleep(0.001)
        return {}

    def unsubscribe(self):
        pass


async def test_a_ledger_scan_that_times_out_raises_instead_of_reporting_nothing_found():
    ledger = AttemptLedger()
    with pytest.raises(LedgerUnavailable):
        await scan_partitions(
            SilentReader(),  # type: ignore[arg-type]
            ledger,
            conversations="conv",
            completions="comp",
            answers="answers",
            committed={0: 3},
            lookback_ms=1000,
            timeout_s=0.01,
        )
    assert len(ledger) == 0


def test_an_attempt_started_after_a_final_one_is_not_finished():
    ledger = AttemptLedger()
    ledger.note("r", 1, final=False)
    ledger.note("r", 1, final=True)
    assert ledger.get("r").final  # type: ignore[union-attr]
    ledger.note("r", 2, final=False)  # attempt 1's events were not all delivered: rerun
    assert not ledger.get("r").final  # type: ignore[union-attr]
    ledger.note("r", 2, final=True)
    ledger.note("r", 1, final=False)  # a stale record read later changes nothing
    assert ledger.get("r").final  # type: ignore[union-attr]


def _finished(attempt: int) -> CompletionFinished:
    return CompletionFinished(request_id="r", conversation_id="c", attempt=attempt,
                              finish_reason="stop", usage=Usage(1, 1), text="x")  # fmt: skip


def test_a_final_missing_on_chat_answers_is_kept_to_be_written_there_in_any_read_order():
    """The replica died between its two writes: finished (never generated again), and
    its final kept for chat.answers; seen there too (before or after), nothing is kept."""
    first, second = _finished(1), _finished(2)
    lone = AttemptLedger()
    lone.final_seen(first)
    assert lone.get("r").final and lone.get("r").unanswered is first  # type: ignore[union-attr]
    completions_first, answers_first = AttemptLedger(), AttemptLedger()
    completions_first.final_seen(first)
    completions_first.answered("r", 1)
    answers_first.answered("r", 1)
    answers_first.final_seen(first)
    for both in (completions_first, answers_first):
        assert both.get("r").final and both.get("r").unanswered is None  # type: ignore[union-attr]
    newer = AttemptLedger()  # attempt 1 answered, attempt 2's copy lost
    newer.answered("r", 1)
    newer.final_seen(second)
    assert newer.get("r").unanswered is second  # type: ignore[union-attr]
    mine = AttemptLedger()  # what this replica finished itself is on both topics
    mine.note("r", 1, final=True)
    assert mine.get("r").unanswered is None  # type: ignore[union-attr]
