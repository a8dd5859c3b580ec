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

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_chaos_run_loses_doubles_and_garbles_nothing(services: Services, tmp_path: Path) -> None:
    if services.source != "local" or services.stack is None:
        pytest.skip("the chaos run restarts Kafka with the local launcher (not in docker mode)")
    report = run_chaos(services, Plan(duration_s=80, clients=3, fault_every_s=8), tmp_path)
    print(report.render())  # noqa: T201 - the figures, in the test's output
    assert not report.failures, report.render()
