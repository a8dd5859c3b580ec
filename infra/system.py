"""The whole system as processes: the local stack plus the four services.

`chatlog up` starts each service with `python -m <package>` (never by import), logs to
`<home>/logs/<component>.log`, pid in `<home>/run/<component>.pid`, and waits for each to
report healthy before starting the next that depends on it.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from infra import gateway
from infra.local.procs import (
    ServiceError,
    clear_stale,
    port_open,
    read_pid,
    spawn,
    stop_pid,
    wait_until,
)
from infra.local.ray import auth_env
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
# nginx in front of the APIs (infra/gateway.py); started last, stopped first.
GATEWAY = Component("gateway", "nginx", "CHATLOG_GATEWAY_PORT", gateway.HEALTH_PATH, 30)
# The APIs that may run as several instances, and the setting that says how many.
SCALED = {
    "processors": "processors_instances",
    "command_api": "command_instances",
    "query_api": "query_instances",
}


def component(name: str) -> Component:
    for c in (*COMPONENTS, GATEWAY):
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
        "CHATLOG_REPLICATION_FACTOR": str(settings.replication_factor),
        "CHATLOG_MIN_INSYNC_REPLICAS": str(settings.min_insync_replicas),
        # Ray's own name: `ray.init()` and the `ray`/`serve` CLIs read it too.
        "RAY_ADDRESS": settings.ray_address or "",
    }
    if settings.ray_nodes > 0:  # the local Ray cluster: its token, one replica per node
        env |= auth_env(Path(settings.home)) | {"CHATLOG_REPLICAS": str(settings.ray_nodes)}
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
        gateway_port: int | None = None,
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
        self.gateway_port = gateway_port or int(
            os.environ.get("CHATLOG_GATEWAY_PORT", settings.gateway_port)
        )
        self.extra_env = extra_env or {}

    def services(self) -> list[Component]:
        """Every process `up` starts: COMPONENTS, each scaled API's extra instances after
        its first (`command_api-2`, ...), and the gateway last."""
        out: list[Component] = []
        for c in COMPONENTS:
            out.append(c)
            count = getattr(self.settings, SCALED[c.name]) if c.name in SCALED else 1
            count = max(count, self._recorded_instances(c))
            out.extend(replace(c, name=f"{c.name}-{i}") for i in range(2, count + 1))
        return [*out, GATEWAY]

    def _recorded_instances(self, c: Component) -> int:
        """How many instances of `c` an earlier `up` left pid files for, so `status` and
        `down` see them whatever this process's CHATLOG_*_INSTANCES says."""
        numbers = [
            int(suffix)
            for p in (self.run_dir / "run").glob(f"{c.name}-*.pid")
            if (suffix := p.stem.removeprefix(f"{c.name}-")).isdigit()
        ]
        return max(numbers, default=1)

    def service(self, name: str) -> Component:
        """The process called `name`, extra instances and the gateway included."""
        for c in self.services():
            if c.name == name:
                return c
        return component(name)

    def port(self, c: Component) -> int | None:
        """Where `c` listens: the first instance on its configured port, extra instances on
        the free port recorded when they started (None before that)."""
        if c.port_env is None:
            return None
        if c.name == GATEWAY.name or c.name in {b.name for b in COMPONENTS}:
            return self.ports()[c.port_env]
        try:
            return int(self.portfile(c).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def portfile(self, c: Component) -> Path:
        return self.run_dir / "run" / f"{c.name}.port"

    @staticmethod
    def instance_index(c: Component) -> int:
        """0 for an API's first instance (`query_api`), k-1 for `query_api-k`."""
        _, _, suffix = c.name.partition("-")
        return int(suffix) - 1 if suffix.isdigit() else 0

    def instances(self, base: str) -> list[Component]:
        """Every instance of the API `base` (`query_api`, `query_api-2`, ...), in order."""
        return [c for c in self.services() if c.name.split("-")[0] == base]

    def instance_ports(self, base: str) -> list[int]:
        """The ports of every instance of the API `base` (those started so far)."""
        ports = (self.port(c) for c in self.instances(base))
        return [p for p in ports if p is not None]

    def gateway_config(self) -> gateway.GatewayConfig:
        return gateway.config_from(
            self.settings,
            self.gateway_port,
            self.instance_ports("command_api"),
            self.instance_ports("query_api"),
            relay_port=self.relay_port,
        )

    @property
    def relay_port(self) -> int | None:
        """The gateway's loopback port for the command API's stream relay, when there are
        several query instances to balance: a free port, recorded on first use."""
        if self.settings.query_instances <= 1:
            return None
        path = self._relay_portfile
        try:
            return int(path.read_text())
        except (FileNotFoundError, ValueError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(port := free_port()))
            return port

    @property
    def base_url(self) -> str:
        """The one URL clients use: the gateway's `/v1`."""
        return self.gateway_config().base_url

    @property
    def _relay_portfile(self) -> Path:
        return self.run_dir / "run" / "gateway-relay.port"

    @property
    def relay_url(self) -> str:
        """Where the command API reads the streams it relays: the gateway's loopback relay
        listener when there are several query instances (balanced, so it survives one
        dying; plain HTTP even when the front door speaks TLS), else the one instance."""
        port = self.relay_port
        return self.query_url if port is None else f"http://127.0.0.1:{port}"

    @property
    def gateway_dir(self) -> Path:
        return self.run_dir / "gateway"

    @property
    def command_url(self) -> str:
        return f"http://127.0.0.1:{self.command_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def health_url(self, c: Component) -> str | None:
        if c.name == GATEWAY.name:
            return self.base_url.removesuffix("/v1") + c.health_path
        return f"http://127.0.0.1:{self.port(c)}{c.health_path}" if c.port_env else None

    def ports(self) -> dict[str, int]:
        return {
            "CHATLOG_QUERY_PORT": self.query_port,
            "CHATLOG_COMMAND_PORT": self.command_port,
            "CHATLOG_SERVE_HTTP_PORT": self.serve_port,
            "CHATLOG_GATEWAY_PORT": self.gateway_port,
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
        # The gateway's certificate may be self-signed: its health is about nginx answering.
        context = ssl._create_unverified_context() if url.startswith("https:") else None
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
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
            "CHATLOG_QUERY_API_URL": self.relay_url,
            **self.extra_env,
        }

    def start(self, c: Component, *, wait: bool = True) -> None:
        if self.running(c):
            return
        clear_stale(self.pidfile(c))  # a crashed earlier run's leftovers hold its port
        if c.port_env and self.port(c) is None:
            self.portfile(c).parent.mkdir(parents=True, exist_ok=True)
            self.portfile(c).write_text(str(free_port()))
        port = self.port(c)
        if c.port_env and port is not None and port_open(port):
            raise ServiceError(f"{c.name}: port {port} ({c.port_env}) is taken by another process")
        if c.name == GATEWAY.name:
            argv = gateway.prepare(self.gateway_config(), self.gateway_dir)
        else:
            argv = [sys.executable, "-m", c.module]
        env = self.env() | ({c.port_env: str(port)} if c.port_env else {})
        if c.name.split("-")[0] == "query_api":
            # which share of chat.completions its hub reads (query_api.hub_share), in the
            # order the gateway lists the instances (instance_ports)
            env["CHATLOG_QUERY_INSTANCE"] = str(self.instance_index(c))
            env["CHATLOG_QUERY_INSTANCES"] = str(len(self.instances("query_api")))
        spawn(argv, log=self.logfile(c.name), pidfile=self.pidfile(c), env=env)
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
        for c in self.services():
            self.start(c, wait=False)
        for c in self.services():
            self.wait_ready(c)

    def stop(self, c: Component) -> bool:
        stopped = stop_pid(self.pidfile(c), timeout_s=30)
        if c.name not in {b.name for b in (*COMPONENTS, GATEWAY)}:
            self.portfile(c).unlink(missing_ok=True)  # the next start picks a free port again
        return stopped

    def stop_all(self) -> list[str]:
        stopped = [c.name for c in reversed(self.services()) if self.stop(c)]
        self._relay_portfile.unlink(missing_ok=True)  # the next `up` picks a free one again
        return stopped


def free_port() -> int:
    """A port nothing listens on now (for the APIs' extra instances)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
