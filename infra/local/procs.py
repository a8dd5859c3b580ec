"""Detached processes with pid files, and bounded waits that say what is missing."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ServiceError(RuntimeError):
    """A local service could not be installed or started; the message says how to fix it."""


def spawn(
    cmd: Sequence[str], *, log: Path, pidfile: Path, env: dict[str, str] | None = None
) -> int:
    """Start `cmd` in its own session (it outlives the CLI), output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    started = start_time(proc.pid)
    pidfile.write_text(f"{proc.pid} {started}" if started is not None else str(proc.pid))
    return proc.pid


def read_pid(pidfile: Path) -> int | None:
    """The live pid recorded in `pidfile`, or None.

    The file holds the pid and the process's start time: after a crash or a reboot the
    pid may belong to an unrelated process by now, which must neither count as the
    service running nor be signalled. (A file with a pid alone is taken at its word.)"""
    pid, started = _recorded(pidfile)
    if pid is None or not _alive(pid):
        return None
    if started is not None and start_time(pid) not in (started, None):
        return None  # the pid was reused
    return pid


def _recorded(pidfile: Path) -> tuple[int | None, int | None]:
    try:
        fields = [int(f) for f in pidfile.read_text().split()]
    except (FileNotFoundError, ValueError):
        return None, None
    if not fields:
        return None, None
    return fields[0], (fields[1] if len(fields) > 1 else None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return False


def clear_stale(pidfile: Path) -> bool:
    """After a crash: remove a pid file whose process is gone, and SIGKILL what is left of
    its session. spawn() makes each service a session leader, and some children leave its
    process group but not its session (Ray's controller and HTTP proxy: they outlive a
    SIGKILLed `inference` for seconds, holding its port). True if leftovers were killed."""
    pid, _ = _recorded(pidfile)
    if pid is None or read_pid(pidfile) is not None:
        return False
    # Linux allocates no pid still in use as a session id, so leftovers with this session
    # exist only while the pid is free; a reused pid's own session is someone else's.
    orphans = [] if _alive(pid) else session_members(pid)
    for orphan in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while orphans and session_members(pid) and time.monotonic() < deadline:  # ports freed
        time.sleep(0.05)
    pidfile.unlink(missing_ok=True)
    return bool(orphans)


def session_members(sid: int) -> list[int]:
    """The live processes of session `sid` (from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_pid(pidfile: Path, *, timeout_s: float = 30.0) -> bool:
    """SIGTERM the process group, SIGKILL after `timeout_s`. True if something was stopped."""
    pid = read_pid(pidfile)
    if pid is None:
        return clear_stale(pidfile)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and read_pid(pidfile) is not None:
        _reap(pid)
        time.sleep(0.1)
    if read_pid(pidfile) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.2)
    _reap(pid)
    pidfile.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool], *, timeout_s: float, what: str, hint: str, interval_s: float = 0.25
) -> None:
    """Poll `check` until true; after `timeout_s` raise ServiceError naming `what` and `hint`.

    A ServiceError from `check` (e.g. "the process exited") is final and raised at once."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ServiceError:
            raise
        except Exception as exc:  # a not-yet-ready service raises all sorts
            last = exc
        time.sleep(interval_s)
    detail = f" (last error: {last})" if last else ""
    raise ServiceError(f"{what} did not become ready in {timeout_s:.0f}s{detail}. {hint}")
