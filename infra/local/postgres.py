"""PostgreSQL from the system's (Debian) packages: a private cluster under the data directory.

The server refuses to run as root, so when we are root the cluster belongs to an
unprivileged user (`postgres` where Debian created it, else a `chatlog` system user).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import psycopg

from infra.local.procs import ServiceError, port_open, wait_until

SUPERUSER = "chatlog"
DATABASE = "chatlog"
# The memory budget (README "Memory budget"): shared buffers, and per backend a sort/hash
# allowance. An idle backend costs ~3 MB; the services' pools hold ~30 (command 16, query
# 10, processors, replicas); 300 leaves room for several test sessions sharing one stack.
SERVER_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "256MB",
    "work_mem": "4MB",
    "maintenance_work_mem": "64MB",
    "effective_cache_size": "2GB",
}


def pg_bindir() -> Path | None:
    """Where initdb/pg_ctl live: `pg_config --bindir`, else Debian's versioned directories."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.insert(0, out.stdout.strip())
    for c in candidates:
        if c and (Path(c) / "initdb").exists():
            return Path(c)
    return None


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


class PostgresNode:
    """One private PostgreSQL cluster under `home`, on 127.0.0.1:`port`, TCP only."""

    name = "postgres"

    def __init__(self, home: Path, port: int) -> None:
        self.port = port
        self.root = (home / "data" / "postgres").absolute()
        self.pgdata = self.root / "cluster"
        self.log = self.root / "server.log"  # written by the cluster's owner

    def installed(self) -> bool:
        return pg_bindir() is not None

    def install(self) -> None:
        if self.installed():
            return
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise ServiceError("PostgreSQL is missing: install it (apt-get install -y postgresql)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "postgresql"],
            check=True,
            env=env,
            capture_output=True,
        )

    def _owner(self) -> str | None:
        """The unprivileged user that runs the cluster when we are root; None otherwise."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", SUPERUSER):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        subprocess.run(["useradd", "--system", "--no-create-home", SUPERUSER], check=True)
        return SUPERUSER

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        bindir = pg_bindir()
        if bindir is None:
            raise ServiceError(
                "PostgreSQL is missing: run `chatlog setup` (apt-get install postgresql)"
            )
        cmd = [str(bindir / args[0]), *args[1:]]
        owner = self._owner()
        if owner is not None:
            cmd = ["runuser", "-u", owner, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        owner = self._owner()
        if owner is None:
            return
        info = pwd.getpwnam(owner)
        os.chown(self.root, info.pw_uid, info.pw_gid)
        # The owner must be able to traverse every ancestor of its data directory.
        for parent in self.root.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.pgdata), "status").returncode == 0

    def start(self, timeout_s: float = 60.0) -> None:
        self._prepare_dirs()
        if not (self.pgdata / "PG_VERSION").exists():
            done = self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            )
            if done.returncode != 0:
                raise ServiceError(f"initdb failed: {done.stdout}{done.stderr}")
        if self.running():
            return
        if port_open(self.port):
            raise ServiceError(
                f"port {self.port} is taken by another process; set CHATLOG_POSTGRES_URL"
            )
        opts = self.server_options()
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.log),
            "-o",
            opts,
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
        )
        if done.returncode != 0:
            raise ServiceError(
                f"postgres did not start: {done.stdout}{done.stderr}"
                f"{self.log_tail()}\n(the whole log: {self.log})"
            )
        wait_until(
            self._ensure_database,
            timeout_s=timeout_s,
            what=f"PostgreSQL on port {self.port}",
            hint=f"See {self.log}.",
        )

    def log_tail(self, lines: int = 20) -> str:
        """The server log's last lines: why a start failed, inside the error a CI run prints
        (the log itself is gone with the CI's clone)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n" + "\n".join(text.splitlines()[-lines:])

    def server_options(self) -> str:
        """`pg_ctl -o`'s options: where it listens, and its memory budget."""
        settings = {"listen_addresses": "127.0.0.1", "unix_socket_directories": "''"}
        return f"-p {self.port} " + " ".join(
            f"-c {k}={v}" for k, v in {**settings, **SERVER_SETTINGS}.items()
        )

    def _ensure_database(self) -> bool:
        with psycopg.connect(
            self.admin_url("postgres"), autocommit=True, connect_timeout=3
        ) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
        return True

    def admin_url(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def healthy(self) -> bool:
        return port_open(self.port) and self.running()

    def stop(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists() or not self.running():
            return False
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
        return True
