"""The chaos run, short (CI): clients submit, stream, hang up and resume, cancel and
delete for ~80 s while a Serve replica, the processors and the query API are SIGKILLed
and restarted and Kafka is restarted; then nothing acknowledged may be lost, doubled or
garbled (`bench/chaos.py` and `bench/chaos_checks.py` say exactly what is checked).

No timing assertion: the run's waits are bounded but generous (2 shared cores), and the
figures are printed whether it passes or not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import Plan, run_chaos
from infra.harness import Services
from schemas.events import CompletionFailed, CompletionFinished, TokenChunk, Usage
from tests.e2e.faults import Outcomes


@pytest.mark.e2e
@pytest.mark.slow
def test_chaos_run_loses_doubles_and_garbles_nothing(services: Services, tmp_path: Path) -> None:
    if services.source != "local" or services.stack is None:
        pytest.skip("the chaos run restarts Kafka with the local launcher (not in docker mode)")
    report = run_chaos(services, Plan(duration_s=80, clients=3, fault_every_s=8), tmp_path)
    print(report.render())  # noqa: T201 - the figures, in the test's output
    assert not report.failures, report.render()


def finished(request_id: str, attempt: int) -> CompletionFinished:
    return CompletionFinished(request_id=request_id, conversation_id="conv-1", attempt=attempt,
                              finish_reason="stop", usage=Usage(3, 8))  # fmt: skip


def test_one_final_is_counted_per_highest_attempt_and_distinct_event_id() -> None:
    """How the run counts "exactly one final event": a redelivered copy (same event_id)
    counts once, an earlier attempt's final is not the outcome, two ids are two outcomes."""
    lost = CompletionFailed(request_id="r1", conversation_id="conv-1", attempt=1,
                            error_code="replica_lost", message="gone", retryable=True)  # fmt: skip
    done = finished("r1", 2)
    chunk = TokenChunk(request_id="r3", conversation_id="conv-1", attempt=1, seq=0,
                       text="Echo", token_count=4)  # fmt: skip
    log = Outcomes()
    # r1: attempt 1 failed, attempt 2's final delivered twice; r2: two finals (two ids)
    for ev in (lost, done, done, finished("r2", 1), finished("r2", 1), chunk):
        log.add(ev)
    assert [f.event_id for f in log.of_highest("r1")] == [done.event_id]
    assert len(log.of_highest("r2")) == 2
    assert log.of_highest("r3") == []  # started, never ended
