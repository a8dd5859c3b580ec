"""The whole system as processes: the local stack plus the four services.

`chatlog up` starts each service with `python -m <package>` (never by import), logs to
`<home>/logs/<component>.log`, pid in `<home>/run/<component>.pid`, and waits for each to
report healthy before starting the next that depends on it.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.local.procs import ServiceError, read_pid, spawn, stop_pid, wait_until
from infra.settings import InfraSettings

COMMAND_PORT = int(os.environ.get("CHATLOG_COMMAND_PORT", "8000"))
QUERY_PORT = int(os.environ.get("CHATLOG_QUERY_PORT", "8001"))


@dataclass(frozen=True)
class Component:
    """One service process: its module, and a URL that answers 200 once it is ready."""

    name: str
    module: str
    health_url: str | None
    start_timeout_s: float


COMPONENTS = (
    Component("processors", "processors", None, 60),
    Component("inference", "inference", None, 300),
    Component("query_api", "query_api", f"http://127.0.0.1:{QUERY_PORT}/readyz", 90),
    Component("command_api", "command_api", f"http://127.0.0.1:{COMMAND_PORT}/readyz", 90),
)


def component(name: str) -> Component:
    for c in COMPONENTS:
        if c.name == name:
            return c
    raise ServiceError(f"no component {name!r}; known: {', '.join(c.name for c in COMPONENTS)}")


class System:
    """Starts, stops and reports the four services of one data directory."""

    def __init__(self, settings: InfraSettings) -> None:
        self.settings = settings
        self.home = Path(settings.home).absolute()

    def pidfile(self, c: Component) -> Path:
        return self.home / "run" / f"{c.name}.pid"

    def logfile(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def running(self, c: Component) -> bool:
        return read_pid(self.pidfile(c)) is not None

    def healthy(self, c: Component) -> bool:
        if not self.running(c):
            return False
        if c.health_url is None:
            return True
        try:
            with urllib.request.urlopen(c.health_url, timeout=2) as resp:
                return bool(resp.status == 200)
        except Exception:
            return False

    def start(self, c: Component) -> None:
        if self.running(c):
            return
        env = {
            "CHATLOG_HOME": str(self.home),
            "CHATLOG_COMMAND_PORT": str(COMMAND_PORT),
            "CHATLOG_QUERY_PORT": str(QUERY_PORT),
            "CHATLOG_QUERY_API_URL": f"http://127.0.0.1:{QUERY_PORT}",
        }
        spawn(
            [sys.executable, "-m", c.module],
            log=self.logfile(c.name),
            pidfile=self.pidfile(c),
            env=env,
        )

        def ready() -> bool:
            if not self.running(c):
                raise ServiceError(f"{c.name} exited; see {self.logfile(c.name)}")
            return self.healthy(c)

        wait_until(
            ready,
            timeout_s=c.start_timeout_s,
            what=c.name,
            hint=f"See {self.logfile(c.name)} (`chatlog logs {c.name}`).",
            interval_s=0.5,
        )

    def stop(self, c: Component) -> bool:
        return stop_pid(self.pidfile(c), timeout_s=30)


def wait_http(url: str, timeout_s: float) -> None:
    """Wait for `url` to answer 200 (used by tests and `chatlog up`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception:
            time.sleep(0.3)
    raise ServiceError(f"{url} did not answer 200 within {timeout_s:.0f}s")
