"""A local Ray node starts at a higher CPU priority and drops back once it has joined."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from infra.local.procs import read_pid, spawn
from infra.local.ray import BOOST_NICE, _boost, _unboost


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may raise a priority")
def test_a_boosted_node_started_like_the_launcher_starts_it_drops_back_to_nice_zero(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "run" / "ray-head.pid"
    # the pid file as spawn writes it (pid and start time), as a node's is
    pid = spawn([*_boost(), "sleep", "60"], log=tmp_path / "node.log", pidfile=pidfile)
    try:
        assert read_pid(pidfile) == pid
        deadline = time.monotonic() + 10  # `nice` sets it just before it execs the command
        while os.getpriority(os.PRIO_PROCESS, pid) != BOOST_NICE:
            assert time.monotonic() < deadline, "never boosted"
            time.sleep(0.02)
        _unboost(pidfile)
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0
    finally:
        os.killpg(pid, signal.SIGKILL)
