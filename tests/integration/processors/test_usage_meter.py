"""The usage meter joins a log that already holds traffic, and survives being killed.

Mixed traffic (retries, cancels, failures, deletes, a redelivered final) is written first
and folded by the Postgres projection; the meter starts afterwards, reads from the
beginning, and must reach the totals recomputed from that read model. Then it is killed
(its task cancelled mid-batch, a transaction rolled back) again and again while catching
up from scratch, and must still reach the same totals: nothing lost, nothing twice; and
the real worker process is SIGKILLed mid-run and restarted. A Postgres rebuild keeps the
meter's rows; a usage replay restores its digest.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.clients import pg_connect
from infra.settings import InfraSettings
from processors.readout import status_rows
from processors.rebuild import rebuild_postgres
from processors.runner import Runner
from processors.script import Clock, exchange, workload
from processors.settings import ProcessorSettings
from processors.usage.projection import UsageProjection
from processors.usage.rebuild import usage_digest
from schemas.codec import encode
from schemas.events import (
    CompletionFailed,
    CompletionFinished,
    ConversationDeleted,
    Event,
    PromptSubmitted,
    Usage,
)
from tests.integration.processors.support import (
    fold_to_end,
    processor_settings,
    publish,
    subprocess_env,
    with_answers,
)

pytestmark = pytest.mark.integration

# Per user, model, day from the meter (the rows the API reads), deleted requests left out.
METER = """
    SELECT user_id, model, day, count(*), sum(prompt_tokens), sum(completion_tokens),
           count(*) FILTER (WHERE outcome = 'cancelled'), count(*) FILTER (WHERE outcome = 'failed')
    FROM chatlog.usage_requests WHERE user_id IS NOT NULL AND NOT request_id = ANY(%s)
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
# The same totals recomputed from the Postgres projection's read model.
READ_MODEL = """
    SELECT user_id, model, (created_at AT TIME ZONE 'UTC')::date, count(*),
           coalesce(sum((usage->>'prompt_tokens')::int), 0),
           coalesce(sum((usage->>'completion_tokens')::int), 0),
           count(*) FILTER (WHERE status = 'cancelled'), count(*) FILTER (WHERE status = 'failed')
    FROM chatlog.completions GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""


def traffic() -> list[Event]:
    """The chaos-like mix: `workload` (retries, deletes) plus cancels, failures, models."""
    events: list[Event] = list(workload(30, chunks_per_request=3))
    clock = Clock()
    for i in range(6):
        cid, rid = f"extra-{i}", f"extra-r{i}"
        user, model = ("bob", "big") if i % 2 else ("carol", "small")
        events += exchange(clock, conversation_id=cid, request_id=rid, user_id=user,
                           prompt="p", answer=["a"], model=model, finish=False)  # fmt: skip
        if i % 3 == 0:  # cancelled
            events.append(CompletionFinished(request_id=rid, conversation_id=cid, attempt=1,
                                             finish_reason="cancelled", usage=Usage(4, 1),
                                             occurred_at=clock()))  # fmt: skip
        elif i % 3 == 1:  # failed for good
            events.append(CompletionFailed(request_id=rid, conversation_id=cid, attempt=1,
                                           error_code="model_error", message="boom",
                                           retryable=False, occurred_at=clock()))  # fmt: skip
        else:  # failed on a lost replica, then retried and finished
            events.append(CompletionFailed(request_id=rid, conversation_id=cid, attempt=1,
                                           error_code="replica_lost", message="gone",
                                           retryable=True, occurred_at=clock()))  # fmt: skip
            events += exchange(clock, conversation_id=cid, request_id=rid, user_id=user,
                               prompt="", answer=["b", "c"], attempt=2, model=model,
                               with_prompt=False)  # fmt: skip
    return events


def answers_of(settings: InfraSettings, events: list[Event]) -> list[Any]:
    """The finals as the replica writes them, CompletionFailed included on chat.answers."""
    out: list[Any] = []
    for item in with_answers(settings, events):
        out.append(item)
        if isinstance(item, CompletionFailed):
            value, headers = encode(item)
            out.append((settings.topics.answers, item.key.encode(), value, headers))
    return out


def deleted_requests(events: list[Event]) -> list[str]:
    gone = {e.conversation_id for e in events if isinstance(e, ConversationDeleted)}
    return [
        e.request_id for e in events if isinstance(e, PromptSubmitted) and e.conversation_id in gone
    ]


def rows(settings: InfraSettings, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with pg_connect(settings) as conn:
        return conn.execute(sql, args or None).fetchall()


async def meter_to_end(settings: ProcessorSettings, *, max_events: int | None = None) -> Runner:
    projection = UsageProjection(settings)
    runner = Runner(settings, projection, group=None, stop_at_lag=0, max_events=max_events)
    try:
        await runner.run()
    finally:
        await projection.close()
    return runner


@pytest.fixture(scope="module")
def settings(infra_settings: InfraSettings) -> ProcessorSettings:
    return processor_settings(infra_settings)


@pytest.fixture(scope="module")
async def history(settings: ProcessorSettings) -> list[Event]:
    """Traffic on the log, folded by the Postgres projection; the meter has not run yet."""
    events = traffic()
    items = answers_of(settings, events)
    publish(settings, items)
    publish(settings, [i for i in items if isinstance(i, tuple)][:5])  # redelivered finals
    await fold_to_end(settings)
    return events


async def test_a_late_meter_catches_up_to_the_read_model(settings, history) -> None:  # type: ignore[no-untyped-def]
    assert rows(settings, "SELECT count(*) FROM chatlog.usage_requests") == [(0,)]
    await meter_to_end(settings)
    gone = deleted_requests(history)
    expected = rows(settings, READ_MODEL)
    assert {r[0] for r in expected} >= {"bob", "carol"}
    assert sum(r[6] for r in expected) == 2 and sum(r[7] for r in expected) == 2
    assert rows(settings, METER, gone) == expected
    # A deleted conversation's tokens were spent: the meter keeps them.
    kept = rows(settings, "SELECT count(*) FROM chatlog.usage_requests WHERE"
                          " request_id = ANY(%s) AND outcome = 'finished'", gone)  # fmt: skip
    assert gone and kept == [(len(gone),)]


class DiesInItsSecondWrite(UsageProjection):
    """Commits its first write that counts a request, then hangs inside the next one's
    open transaction.

    The kill lands there whatever the machine's speed (a timed kill let a quiet machine
    fold the whole log before it came) and whatever order the partitions come in (counting
    any write, a CI run's first batches held no user's row yet, and nothing was counted).
    """

    def __init__(self, settings: ProcessorSettings) -> None:
        super().__init__(settings)
        self.writes = 0
        self.hanging = asyncio.Event()

    async def _write(self, conn: Any, rows: list[Any]) -> None:
        await super()._write(conn, rows)
        if not any(r.user_id for r in rows):
            return  # usage_daily counts rows with a user only
        self.writes += 1
        if self.writes >= 2:
            self.hanging.set()
            await asyncio.Event().wait()  # until cancelled: the transaction rolls back


async def test_killed_again_and_again_it_still_counts_each_request_once(settings, history) -> None:  # type: ignore[no-untyped-def]
    await meter_to_end(settings)  # the uninterrupted totals
    before = rows(settings, "SELECT * FROM chatlog.usage_daily ORDER BY 1, 2, 3")
    with pg_connect(settings) as conn:  # start over from nothing
        conn.execute("DELETE FROM chatlog.usage_requests")
        conn.execute("DELETE FROM chatlog.projection_checkpoints WHERE projection = 'usage'")
        conn.commit()
    for _ in range(4):  # kill it mid-run: a cancelled task, its open transaction rolled back
        projection = DiesInItsSecondWrite(settings)
        runner = Runner(settings, projection, group=None, stop_at_lag=0, max_events=7)
        task = asyncio.create_task(runner.run())
        hanging = asyncio.create_task(projection.hanging.wait())
        await asyncio.wait([task, hanging], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert projection.hanging.is_set(), "the meter never reached its second write"
        task.cancel()
        await asyncio.gather(task, hanging, return_exceptions=True)
        await projection.close()
    partial = rows(settings, "SELECT coalesce(sum(requests), 0) FROM chatlog.usage_daily")
    assert 0 < partial[0][0] < sum(r[3] for r in before)  # it really was stopped part-way
    await meter_to_end(settings)
    assert rows(settings, "SELECT * FROM chatlog.usage_daily ORDER BY 1, 2, 3") == before


async def test_a_postgres_rebuild_keeps_the_meters_rows(settings, history) -> None:  # type: ignore[no-untyped-def]
    await meter_to_end(settings)
    before = rows(settings, "SELECT * FROM chatlog.usage_daily ORDER BY 1, 2, 3")
    await rebuild_postgres(settings, quiet=True)  # a switch of the whole `chatlog` schema
    assert rows(settings, "SELECT * FROM chatlog.usage_daily ORDER BY 1, 2, 3") == before
    runner = await meter_to_end(settings)
    assert runner.folded == 0  # its checkpoints came along too: nothing to count again
    assert rows(settings, "SELECT * FROM chatlog.usage_daily ORDER BY 1, 2, 3") == before


async def test_a_usage_replay_restores_the_live_digest(settings, history) -> None:  # type: ignore[no-untyped-def]
    await meter_to_end(settings)
    digest = usage_digest(settings)
    assert int(digest["usage_requests"]) > 0
    with pg_connect(settings) as conn:  # a damaged read model
        conn.execute("UPDATE chatlog.usage_requests SET prompt_tokens = 999")
        conn.commit()
    assert usage_digest(settings) != digest
    replay = subprocess.run(
        [sys.executable, "-m", "processors", "replay", "--projection", "usage", "--quiet"],
        env=subprocess_env(settings), capture_output=True, timeout=240, check=False,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr.decode()[-2000:]
    assert b"usage: rebuilt from" in replay.stdout
    cli = subprocess.run(
        [sys.executable, "-m", "processors", "digest", "--projection", "usage"],
        env=subprocess_env(settings), capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(cli.stdout) == usage_digest(settings) == digest
    assert rows(settings, "SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                "chatlog_usage_next") == [(0,)]  # fmt: skip


def _usage_folded(settings: ProcessorSettings) -> tuple[int, int]:
    """(events folded by the usage meter, the end of the logs it reads)."""
    lags = [r for r in status_rows(settings) if r["projection"] == "usage"]
    return sum(r["checkpoint"] or 0 for r in lags), sum(r["end"] for r in lags)


def _worker(settings: ProcessorSettings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "processors", "run"],
            env=subprocess_env(settings, CHATLOG_PROJECTIONS="usage", **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait(settings: ProcessorSettings, done: Callable[[int, int], bool], log: Path) -> None:
    deadline = time.monotonic() + 120
    while not done(*_usage_folded(settings)):
        assert time.monotonic() < deadline, f"the meter did not get there; see {log}"
        time.sleep(0.01)


@pytest.mark.slow
async def test_the_live_meter_sigkilled_mid_run_restarts_to_the_same_totals(
    settings: ProcessorSettings, history: list[Event], tmp_path: Path
) -> None:
    more = list(workload(150, chunks_per_request=1, seed=7))
    publish(settings, answers_of(settings, more))
    await fold_to_end(settings)
    log = tmp_path / "processors.log"
    before, _ = _usage_folded(settings)
    proc = _worker(settings, log, CHATLOG_BATCH_MAX_EVENTS="5")
    try:
        # killed right after its first committed batch: with 5-event batches the rest of
        # the log takes many more (waiting for half of it let a quiet, fast machine finish)
        _wait(settings, lambda folded, end: folded > before, log)
        proc.send_signal(signal.SIGKILL)  # mid-run: it folds 5-event batches nonstop
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    folded, end = _usage_folded(settings)
    assert folded < end, "the kill must land before the end"
    proc = _worker(settings, log)
    try:
        _wait(settings, lambda folded, end: folded >= end, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert rows(settings, METER, deleted_requests(history + more)) == rows(settings, READ_MODEL)
