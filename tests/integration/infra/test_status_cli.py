"""`chatlog status` on the real stack: a projection far behind the log is reported degraded,
and the command exits non-zero (here the services are not running, so it says down too)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from confluent_kafka import Producer

from infra.clients import producer_config
from infra.harness import Services
from infra.settings import InfraSettings
from infra.system import settings_env

pytestmark = pytest.mark.integration


def test_status_reports_a_lagging_projection_degraded_and_exits_non_zero(
    services: Services, infra_settings: InfraSettings
) -> None:
    if services.source != "local":
        pytest.skip("status reads the launcher's pid files")
    producer = Producer(producer_config(infra_settings))
    for i in range(1_200):  # nothing folds them: both projections are 1,200 events behind
        producer.produce(infra_settings.topics.conversations, key=f"c{i % 40}", value=b"{}")
    assert producer.flush(30) == 0

    env = {**os.environ, **settings_env(infra_settings), "CHATLOG_STATUS_MAX_LAG_EVENTS": "1000"}
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    rows = {line[:20].strip(): line[21:].split(None, 1) for line in done.stdout.splitlines()}
    assert rows["projection postgres"] == ["degraded", "lag 1200 events (max 1000)"], done.stdout
    assert rows["projection search"][0] == "degraded"
    assert rows["projection usage"] == ["degraded", "lag 1200 events (max 1000)"], done.stdout
    assert rows["kafka"][0] == "healthy"
    assert rows["processors"] == ["down", "stopped"]
    assert done.returncode == 1, done.stdout + done.stderr
