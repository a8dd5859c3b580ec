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
