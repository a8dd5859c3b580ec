"""A local Ray cluster of real nodes: `ray start --head` and `ray start --address` (raylets).

Without it, `python -m inference` starts Ray inside its own process (`ray.init()`): one
node. The cluster profile starts a head and workers as separate raylets, each in its own
process group with its own pid file, so the inference deployment spreads its replicas
over nodes and a test can SIGKILL one node (its raylet and every worker on it) the way a
machine dies. Each node reserves `num_cpus` CPUs: with one CPU per node and one per
replica, Ray must place two replicas on two nodes.

Ports (all from the head's GCS port `base`, so one offset moves them all): node i uses
base + 1 + 10 i ... + 7 for its own servers, and base + 100 (i + 1) ... + 99 for its
worker processes. Session files live in a short /tmp directory per cluster: Ray's unix
socket paths must stay under 107 bytes (and a cluster of our own never answers another
program's `ray.init()`, which looks for the cluster last started in Ray's default one).
Ray turns 127.0.0.1 into the machine's address by itself: the nodes register that.

Every process of the cluster (nodes and the `python -m inference` driver) authenticates
with one token (`auth_env`): Ray 2.60 switches a head to token auth as soon as
`~/.ray/auth_token` exists, and a worker node or driver without the token is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import time
from pathlib import Path

from infra.local.procs import (
    ServiceError,
    clear_stale,
    port_open,
    read_pid,
    spawn,
    stop_pid,
)

log = logging.getLogger(__name__)
NODE_PORTS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


def auth_env(home: Path) -> dict[str, str]:
    """The environment that makes a Ray process use the cluster's token (made once)."""
    path = Path(home).absolute() / "run" / "ray-auth-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


# A raylet waits a fixed 15 s for its dashboard agent's port file and aborts after that
# (ray-project/ray#65983: no setting lengthens it). On a machine this loaded (2 cores, a
# load of 10-20) the agent's imports alone took longer. So, where we may (root), a node
# starts at a higher CPU priority and drops back to normal once it has joined.
BOOST_NICE = -10


def _boost() -> list[str]:
    return ["nice", "-n", str(BOOST_NICE)] if os.geteuid() == 0 else []


def _unboost(pidfile: Path) -> None:
    """Every process of the node's group (spawned in its own session) back to nice 0."""
    group = read_pid(pidfile)
    if os.geteuid() != 0 or group is None:
        return
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.getpgid(int(entry.name)) == group:
                os.setpriority(os.PRIO_PROCESS, int(entry.name), 0)


class RayNode:
    """Node `index` (0: the head) of the local Ray cluster whose GCS listens on `base`."""

    def __init__(
        self, home: Path, index: int, base: int, *, object_store_bytes: int, num_cpus: int = 1
    ) -> None:
        self.index = index
        self.home = home
        self.base = base
        self.object_store_bytes = object_store_bytes
        self.num_cpus = num_cpus
        self.name = "ray-head" if index == 0 else f"ray-worker-{index}"
        self.log = home / "logs" / f"{self.name}.log"
        self.pidfile = home / "run" / f"{self.name}.pid"
        self.temp_dir = Path(f"/tmp/chatlog-ray-{base}")
        self._log_mark = 0

    @property
    def address(self) -> str:
        """The cluster's address (`RAY_ADDRESS`): the head's GCS."""
        return f"127.0.0.1:{self.base}"

    @property
    def port(self) -> int:
        """The node manager's port: open once the raylet serves."""
        return self.base + 1 + 10 * self.index

    def installed(self) -> bool:
        return True  # ray comes with the Python environment

    def install(self) -> None:
        """Nothing to fetch: the `ray` package is a Python dependency."""

    def command(self) -> list[str]:
        first = self.port
        ports = [f"{flag}={first + k}" for k, flag in enumerate(NODE_PORTS)]
        workers = self.base + 100 * (self.index + 1)
        cmd = [
            sys.executable,
            "-m",
            "infra.local.ray_start",
            "start",
            "--block",  # stays in the foreground: our pid file, our process group
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_bytes}",
            f"--temp-dir={self.temp_dir}",
            *ports,
            f"--min-worker-port={workers}",
            f"--max-worker-port={workers + 99}",
            "--disable-usage-stats",
        ]
        if self.index == 0:
            return [
                *cmd,
                "--head",
                f"--port={self.base}",
                f"--ray-client-server-port={first + len(NODE_PORTS)}",
                "--include-dashboard=false",
            ]
        return [*cmd, f"--address={self.address}"]

    def running(self) -> bool:
        return read_pid(self.pidfile) is not None

    def start(self, timeout_s: float = 300.0, *, wait: bool = True, tries: int = 5) -> None:
        """Start the node; with `wait`, until it joined the cluster. A raylet gives its
        agents a fixed ~15-40 s to come up and aborts otherwise (ray-project/ray#65983, no
        setting lengthens it): on a loaded machine that happens, so start again."""
        for attempt in range(1, tries + 1):
            self._spawn()
            if not wait:
                return
            try:
                self.wait_ready(timeout_s)
                return
            except ServiceError:
                if attempt == tries or self.running():
                    raise
                log.warning("%s exited during start-up (try %d of %d)", self.name, attempt, tries)

    def _spawn(self) -> None:
        if self.running():
            return
        # what a crashed node (or this start's failed try) left of its session holds ports
        clear_stale(self.pidfile)
        if port_open(self.port):
            raise ServiceError(f"{self.name}: port {self.port} is taken; set CHATLOG_RAY_PORT")
        # RAY_ADDRESS in our own environment would make `ray start --head` refuse to start.
        env = {
            "RAY_ADDRESS": "",
            "RAY_USAGE_STATS_ENABLED": "0",
            # On SIGTERM Ray drains a node first, waiting up to this long (30 s by
            # default) for Serve to move its replicas off. A local node stops when the
            # whole local system does (`chatlog down`, inference stopped first): there is
            # nowhere to move them, and a head never finishes draining, so `down` sat out
            # the full 30 s per node before its SIGKILL.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            **auth_env(self.home),
        }
        self._log_mark = self.log.stat().st_size if self.log.exists() else 0
        spawn([*_boost(), *self.command()], log=self.log, pidfile=self.pidfile, env=env)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until `ray start` printed that its raylet registered with the GCS (an open port
        comes earlier, and a worker node joining then is refused); at once if it exited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise ServiceError(f"{self.name} exited during start-up; see {self.log}")
            with open(self.log, "rb") as out:
                out.seek(self._log_mark)
                if b"Ray runtime started." in out.read():
                    _unboost(self.pidfile)
                    return
            time.sleep(0.5)
        raise ServiceError(f"{self.name} did not start in {timeout_s:.0f}s; see {self.log}")

    def stop(self) -> bool:
        return stop_pid(self.pidfile, timeout_s=30)

    def healthy(self) -> bool:
        return self.running() and port_open(self.port)
