"""The whole system as a user runs it: the four services as processes, over HTTP only.

Services come from the harness (real Kafka, Postgres, Meilisearch); the system runs on a
private topic prefix / database / index prefix, with the scripted engine on real Ray Serve
so the tests are fast and deterministic. Logs land in the test's run directory.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.auth import apply_auth_ddl, create_key
from infra.clients import pg_connect
from infra.settings import InfraSettings
from infra.system import System

SCRIPTED_MODEL = "chatlog-scripted"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_system(
    infra_settings: InfraSettings, run_dir: Path, env: dict[str, str] | None = None
) -> Iterator[System]:
    """The four services on `infra_settings`, scripted engine, ephemeral ports everywhere
    (so a developer's `chatlog up` or another test's system never collides); their logs
    are printed when start-up fails."""
    settings = infra_settings.model_copy(update={"models": SCRIPTED_MODEL})
    sys_ = System(
        settings,
        command_port=free_port(),
        query_port=free_port(),
        serve_port=free_port(),
        run_dir=run_dir,
        extra_env={
            "CHATLOG_ENGINE": "scripted",
            "CHATLOG_SCRIPTED_TOKEN_RATE": "100",
            "CHATLOG_SCRIPTED_REPLY_REPEAT": "3",
            "CHATLOG_REPLICAS": "1",
            "CHATLOG_METRICS_PORT": "0",
            **(env or {}),
        },
    )
    try:
        sys_.start_all()
        yield sys_
    except Exception:
        for log in sorted((run_dir / "logs").glob("*.log")):
            print(f"==== {log.name}\n{log.read_text()[-4000:]}")  # noqa: T201 - test diagnostics
        raise
    finally:
        sys_.stop_all()


@pytest.fixture(scope="module")
def system(
    infra_settings: InfraSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    with running_system(infra_settings, tmp_path_factory.mktemp("system")) as sys_:
        yield sys_


@pytest.fixture(scope="module")
def keys(infra_settings: InfraSettings) -> dict[str, str]:
    with pg_connect(infra_settings) as conn:
        apply_auth_ddl(conn)
        return {user: create_key(conn, user) for user in ("alice", "bob")}


class User:
    """One API user: a command client and a query client carrying the user's key."""

    def __init__(self, system: System, key: str) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        self.key = key
        self.command = httpx.Client(base_url=system.command_url, timeout=60, headers=headers)
        self.query = httpx.Client(base_url=system.query_url, timeout=60, headers=headers)

    def close(self) -> None:
        self.command.close()
        self.query.close()


@pytest.fixture(scope="module")
def alice(system: System, keys: dict[str, str]) -> Iterator[User]:
    user = User(system, keys["alice"])
    yield user
    user.close()


@pytest.fixture(scope="module")
def bob(system: System, keys: dict[str, str]) -> Iterator[User]:
    user = User(system, keys["bob"])
    yield user
    user.close()
