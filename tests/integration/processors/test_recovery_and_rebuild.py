"""Crash recovery and zero-downtime rebuild of the Postgres projection (real processes)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from infra.settings import InfraSettings
from processors.readout import postgres_digest, status_rows
from processors.script import workload
from tests.integration.processors.support import processor_settings, publish, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _start(settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the worker's log, for a failing run's post-mortem
        return subprocess.Popen(
            [sys.executable, "-m", "processors", "run"],
            env=subprocess_env(settings, CHATLOG_PROJECTIONS="postgres", **env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _log_end(settings) -> int:
    return sum(r["end"] for r in status_rows(settings) if r["projection"] == "postgres")


def _folded(settings) -> int:
    """Events folded by the postgres projection (the sum of its checkpoints)."""
    with psycopg.connect(settings.postgres_url) as conn:
        row = conn.execute(
            'SELECT coalesce(sum("offset"), 0) FROM chatlog.projection_checkpoints'
            " WHERE projection = 'postgres'"
        ).fetchone()
    return int(row[0]) if row else 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_sigkill_mid_batch_then_restart_equals_a_rebuild_and_readers_never_see_a_gap(
    infra_settings: InfraSettings, tmp_path: Path
) -> None:
    settings = processor_settings(infra_settings)
    publish(settings, workload(300))
    total = _log_end(settings)
    log = tmp_path / "processors.log"
    proc = _start(settings, log, CHATLOG_BATCH_MAX_EVENTS="200")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if _folded(settings) > total * 0.3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-batch: it folds 200-event batches nonstop
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 0 < _folded(settings) < total, "the kill must land part-way"

    proc = _start(settings, log)
    try:
        deadline = time.monotonic() + 120
        while _folded(settings) < total:
            assert time.monotonic() < deadline, f"restart did not catch up; see {log}"
            time.sleep(0.2)
        live = postgres_digest(settings, streams=True)
        with psycopg.connect(settings.postgres_url) as conn:
            expected = conn.execute(READ).fetchone()

        observations: list[object] = []
        stop = threading.Event()
        reader = threading.Thread(target=_poll, args=(settings, stop, observations))
        reader.start()
        try:
            rebuild = subprocess.run(
                [sys.executable, "-m", "processors", "replay", "--projection", "postgres",
                 "--quiet"],
                env=subprocess_env(settings), capture_output=True, timeout=240, check=False,
            )  # fmt: skip
        finally:
            stop.set()
            reader.join()
        assert rebuild.returncode == 0, rebuild.stderr.decode()[-2000:]
        assert postgres_digest(settings, streams=True) == live
        assert len(observations) > 10
        assert {o for o in observations} == {expected}, "a reader saw a partial read model"
        # The live projector, fenced off by the switch, carries on from the new checkpoints.
        publish(settings, workload(3, seed=1))
        total = _log_end(settings)
        deadline = time.monotonic() + 60
        while _folded(settings) < total:
            assert time.monotonic() < deadline, "live projector did not resume after the switch"
            time.sleep(0.2)
    finally:
        _stop(proc)


READ = (
    "SELECT (SELECT count(*) FROM chatlog.conversations),"
    " (SELECT count(*) FROM chatlog.messages), (SELECT sum(length(content)) FROM chatlog.messages)"
)


def _poll(settings, stop: threading.Event, out: list[object]) -> None:
    """A reader on one connection with server-side prepared statements, like an API."""
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        while not stop.is_set():
            try:
                out.append(conn.execute(READ, prepare=True).fetchone())
            except psycopg.Error as exc:
                out.append(repr(exc))
            time.sleep(0.01)
