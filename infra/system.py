"""The whole system as processes: the local stack plus the four services.

`chatlog up` starts each service with `python -m <package>` (never by import), logs to
`<home>/logs/<component>.log`, pid in `<home>/run/<component>.pid`, and waits for each to
report healthy before starting the next that depends on it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local.procs import ServiceError, port_open, read_pid, spawn, stop_pid, wait_until
from infra.settings import InfraSettings

DEFAULT_COMMAND_PORT = 8000
DEFAULT_QUERY_PORT = 8001
DEFAULT_SERVE_PORT = 8010


@dataclass(frozen=True)
class Component:
    """One service process: its module, and the HTTP port/path that answers 200 when ready."""

    name: str
    module: str
    port_env: str | None
    health_path: str
    start_timeout_s: float


COMPONENTS = (
    Component("processors", "processors", None, "", 60),
    # Serve answers once the replica's __init__ (model load, consumer start) has finished.
    Component("inference", "inference", "CHATLOG_SERVE_HTTP_PORT", "/inference/status", 300),
    Component("query_api", "query_api", "CHATLOG_QUERY_PORT", "/readyz", 90),
    Component("command_api", "command_api", "CHATLOG_COMMAND_PORT", "/readyz", 90),
)


def component(name: str) -> Component:
    for c in COMPONENTS:
        if c.name == name:
            return c
    raise ServiceError(f"no component {name!r}; known: {', '.join(c.name for c in COMPONENTS)}")


def settings_env(settings: InfraSettings) -> dict[str, str]:
    """The environment that makes a child process see exactly `settings`."""
    env = {
        "CHATLOG_ENVIRONMENT": settings.environment,
        "CHATLOG_HOME": str(Path(settings.home).absolute()),
        "CHATLOG_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CHATLOG_TOPIC_PREFIX": settings.topic_prefix,
        "CHATLOG_PARTITIONS": str(settings.partitions),
        "CHATLOG_POSTGRES_URL": settings.postgres_url,
        "CHATLOG_MEILI_URL": settings.meili_url or "",
        "CHATLOG_MEILI_KEY": settings.meili_key,
        "CHATLOG_INDEX_PREFIX": settings.index_prefix,
        "CHATLOG_MODELS": settings.models,
        "CHATLOG_RAY_OBJECT_STORE_BYTES": str(settings.ray_object_store_bytes),
    }
    return env


class System:
    """Starts, stops and reports the four services of one data directory.

    `run_dir` holds pid and log files (default: the data directory's); `extra_env` lets a
    test pick, e.g., the scripted engine. Children get the settings through the environment.
    """

    def __init__(
        self,
        settings: InfraSettings,
        *,
        command_port: int | None = None,
        query_port: int | None = None,
        serve_port: int | None = None,
        run_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.home = Path(settings.home).absolute()
        self.run_dir = run_dir or self.home
        self.command_port = command_port or int(
            os.environ.get("CHATLOG_COMMAND_PORT", DEFAULT_COMMAND_PORT)
        )
        self.query_port = query_port or int(
            os.environ.get("CHATLOG_QUERY_PORT", DEFAULT_QUERY_PORT)
        )
        self.serve_port = serve_port or int(
            os.environ.get("CHATLOG_SERVE_HTTP_PORT", DEFAULT_SERVE_PORT)
        )
        self.extra_env = extra_env or {}

    @property
    def command_url(self) -> str:
        return f"http://127.0.0.1:{self.command_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def health_url(self, c: Component) -> str | None:
        return f"http://127.0.0.1:{self.ports()[c.port_env]}{c.health_path}" if c.port_env else None

    def ports(self) -> dict[str, int]:
        return {
            "CHATLOG_QUERY_PORT": self.query_port,
            "CHATLOG_COMMAND_PORT": self.command_port,
            "CHATLOG_SERVE_HTTP_PORT": self.serve_port,
        }

    def pidfile(self, c: Component) -> Path:
        return self.run_dir / "run" / f"{c.name}.pid"

    def logfile(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def running(self, c: Component) -> bool:
        return read_pid(self.pidfile(c)) is not None

    def healthy(self, c: Component) -> bool:
        if not self.running(c):
            return False
        url = self.health_url(c)
        if url is None:
            return True
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except Exception:
            return False

    def models(self) -> dict[str, Any] | None:
        """The command API's per-model view (its /readyz `models`, read even from a 503);
        None when it does not answer."""
        url = self.health_url(component("command_api"))
        if url is None or not self.running(component("command_api")):
            return None
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                return None
        except Exception:
            return None
        models = body.get("models") if isinstance(body, dict) else None
        return models if isinstance(models, dict) else None

    def env(self) -> dict[str, str]:
        return {
            **settings_env(self.settings),
            **{k: str(v) for k, v in self.ports().items()},
            "CHATLOG_QUERY_API_URL": self.query_url,
            **self.extra_env,
        }

    def start(self, c: Component, *, wait: bool = True) -> None:
        if self.running(c):
            return
        if c.port_env and port_open(self.ports()[c.port_env]):
            port = self.ports()[c.port_env]
            raise ServiceError(f"{c.name}: port {port} ({c.port_env}) is taken by another process")
        spawn(
            [sys.executable, "-m", c.module],
            log=self.logfile(c.name),
            pidfile=self.pidfile(c),
            env=self.env(),
        )
        if wait:
            self.wait_ready(c)

    def wait_ready(self, c: Component) -> None:
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

    def start_all(self) -> None:
        """Start every component, the slow ones concurrently, then wait for each."""
        for c in COMPONENTS:
            self.start(c, wait=False)
        for c in COMPONENTS:
            self.wait_ready(c)

    def stop(self, c: Component) -> bool:
        return stop_pid(self.pidfile(c), timeout_s=30)

    def stop_all(self) -> list[str]:
        return [c.name for c in reversed(COMPONENTS) if self.stop(c)]


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


@dataclass(frozen=True)
class Probe:
    """What `chatlog status` saw of one component: its process, and its health check."""

    name: str
    running: bool
    healthy: bool
    where: str = ""


@dataclass(frozen=True)
class Verdict:
    """One line of `chatlog status`: a component's state (healthy, degraded, down) and why."""

    name: str
    state: str
    detail: str = ""


HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"


def assess(
    probes: Sequence[Probe], lags: Mapping[str, int] | None, max_lag: int, lag_error: str = ""
) -> list[Verdict]:
    """The verdict per component and per projection (pure: the CLI gathers the inputs).

    A process that runs but fails its health check is down (it serves nothing). A
    projection more than `max_lag` events behind the log is degraded: it answers, with
    data that old. Lags that could not be read (`lags` None) leave the projections down.
    """
    out = [_probe_verdict(p) for p in probes]
    if lags is None:
        return [*out, Verdict("projections", DOWN, f"lag unreadable: {lag_error}".strip())]
    for projection, lag in sorted(lags.items()):
        state = DEGRADED if lag > max_lag else HEALTHY
        out.append(Verdict(f"projection {projection}", state, f"lag {lag} events (max {max_lag})"))
    return out


def _probe_verdict(p: Probe) -> Verdict:
    if p.healthy:
        return Verdict(p.name, HEALTHY, p.where)
    return Verdict(p.name, DOWN, f"running, not answering {p.where}" if p.running else "stopped")


def model_verdicts(models: Mapping[str, Any] | None) -> list[Verdict]:
    """A line per model from the command API's breakers: healthy (closed), degraded
    (half-open: probing), down (open: its prompts answer 503 model_unavailable)."""
    out: list[Verdict] = []
    for model, view in sorted((models or {}).items()):
        breaker = str(view.get("breaker"))
        state = {"closed": HEALTHY, "half_open": DEGRADED}.get(breaker, DOWN)
        live = view.get("live_replicas")
        replicas = "no replica seen yet" if live is None else f"{live} live replica(s)"
        out.append(
            Verdict(
                f"model {model}", state, f"breaker {breaker} ({view.get('reason')}), {replicas}"
            )
        )
    return out


def exit_code(verdicts: Sequence[Verdict]) -> int:
    """0 when everything is healthy, 1 when anything is down, 2 when degraded but none down."""
    states = {v.state for v in verdicts}
    if DOWN in states:
        return 1
    return 2 if DEGRADED in states else 0
