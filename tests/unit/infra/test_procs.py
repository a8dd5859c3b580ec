"""Pid files after a crash: a SIGKILLed service's leftovers do not block the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.local.procs import (
    ServiceError,
    clear_stale,
    port_open,
    read_pid,
    spawn,
    start_time,
    stop_pid,
    wait_until,
)
from infra.system import free_port

# A service whose child leaves its process group but not its session, holding a port (as
# Ray's HTTP proxy does for `inference`): killing the group does not kill the child.
LEADER = """
import os, socket, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", '''
import os, socket, time
os.setpgid(0, 0)
s = socket.socket(); s.bind(("127.0.0.1", PORT)); s.listen()
time.sleep(600)
'''.replace("PORT", sys.argv[1])])
time.sleep(600)
"""


def crashed_service(tmp_path: Path) -> tuple[Path, int]:
    """A service started like `chatlog up` starts one, then SIGKILLed (its group)."""
    port, pidfile = free_port(), tmp_path / "run" / "svc.pid"
    pid = spawn(
        [sys.executable, "-c", LEADER, str(port)], log=tmp_path / "svc.log", pidfile=pidfile
    )
    wait_for(lambda: port_open(port))
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: read_pid(pidfile) is None)
    assert port_open(port)  # the leftover child still holds the port
    return pidfile, port


def wait_for(check: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_next_start_after_a_crash_finds_the_port_free(tmp_path: Path) -> None:
    pidfile, port = crashed_service(tmp_path)
    assert clear_stale(pidfile)
    assert not port_open(port) and not pidfile.exists()


def test_down_after_a_crash_stops_the_leftovers(tmp_path: Path) -> None:
    pidfile, port = crashed_service(tmp_path)
    assert stop_pid(pidfile, timeout_s=5)
    assert not port_open(port) and not pidfile.exists()


def test_a_live_service_is_not_stale(tmp_path: Path) -> None:
    pidfile = tmp_path / "run" / "live.pid"
    spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"], log=tmp_path / "l", pidfile=pidfile
    )
    try:
        assert not clear_stale(pidfile) and read_pid(pidfile) is not None
    finally:
        stop_pid(pidfile, timeout_s=5)


def test_a_service_that_exits_while_starting_fails_at_once_not_at_the_timeout() -> None:
    def exited() -> bool:
        raise ServiceError("svc exited; see its log")

    started = time.monotonic()
    with pytest.raises(ServiceError, match="exited"):
        wait_until(exited, timeout_s=60, what="svc", hint="")
    assert time.monotonic() - started < 30  # not the 60 s timeout


def test_a_pid_reused_by_another_process_is_neither_running_nor_signalled(
    tmp_path: Path,
) -> None:
    """After a crash or a reboot the recorded pid may be someone else's by now."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pidfile = tmp_path / "run" / "svc.pid"
        pidfile.parent.mkdir()
        started = start_time(other.pid)
        assert started is not None
        # What `spawn` wrote for the crashed service, whose pid `other` now has.
        pidfile.write_text(f"{other.pid} {started - 1}")
        assert read_pid(pidfile) is None
        assert not stop_pid(pidfile, timeout_s=5)  # `down`: nothing of ours to stop
        assert other.poll() is None and not pidfile.exists()  # untouched; the file is gone
        pidfile.write_text(f"{other.pid} {started}")
        assert read_pid(pidfile) == other.pid
    finally:
        other.kill()
        other.wait()
