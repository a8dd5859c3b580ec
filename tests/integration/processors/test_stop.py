"""`python -m processors` ends on SIGTERM, even when the topics it reads were deleted.

aiokafka's `consumer.stop()` waited forever once its topics were gone (its metadata
refresh spun on "Topic … not found in cluster metadata"), so `chatlog down`, or any
supervisor's stop, hung on the processors until SIGKILL.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.harness import delete_topics
from infra.settings import InfraSettings
from tests.integration.processors.support import subprocess_env

pytestmark = pytest.mark.integration


def test_sigterm_ends_the_processors_after_their_topics_were_deleted(
    infra_settings: InfraSettings, tmp_path: Path
) -> None:
    log = tmp_path / "processors.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "processors"],
            env=subprocess_env(infra_settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        groups = [f"{infra_settings.topic_prefix}chatlog-projection-{p}" for p in ("postgres", "search", "usage")]  # fmt: skip
        deadline = time.monotonic() + 120
        while not all(f"Successfully synced group {g}" in log.read_text() for g in groups):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the projections never joined their groups"
            time.sleep(0.5)
        delete_topics(infra_settings.kafka_bootstrap, list(infra_settings.topics.all()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
