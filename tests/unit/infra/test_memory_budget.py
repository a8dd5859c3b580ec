"""Every part's memory budget is on its command line, the same in the launcher and in
docker-compose.yml (README "Memory budget")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML (via ray), no stubs installed

from infra.local.kafka import JVM_MEMORY, KafkaNode
from infra.local.meili import MAX_INDEXING_MEMORY, MAX_INDEXING_THREADS, MeiliNode
from infra.local.postgres import SERVER_SETTINGS, PostgresNode
from infra.settings import InfraSettings
from infra.system import settings_env

COMPOSE = Path(__file__).parents[3] / "infra" / "docker-compose.yml"


def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_meilisearch_indexing_memory_and_threads_are_capped(tmp_path: Path) -> None:
    cmd = MeiliNode(tmp_path, 17700, "k" * 32).command()
    assert flag(cmd, "--max-indexing-memory") == MAX_INDEXING_MEMORY == "256MiB"
    assert flag(cmd, "--max-indexing-threads") == str(MAX_INDEXING_THREADS) == "1"
    env = compose()["meilisearch"]["environment"]
    assert env["MEILI_MAX_INDEXING_MEMORY"] == MAX_INDEXING_MEMORY
    assert str(env["MEILI_MAX_INDEXING_THREADS"]) == str(MAX_INDEXING_THREADS)


def test_kafka_heap_and_off_heap_are_capped(tmp_path: Path) -> None:
    cmd = KafkaNode(tmp_path, 19092).command(tmp_path / "server.properties")
    assert "-Xmx768m" in cmd
    assert "-XX:MaxDirectMemorySize=256m" in cmd
    assert cmd[1 : 1 + len(JVM_MEMORY)] == list(JVM_MEMORY)  # JVM options, before the class
    assert compose()["kafka"]["environment"]["KAFKA_HEAP_OPTS"].split() == list(JVM_MEMORY)


def test_postgres_buffers_and_connections_are_set(tmp_path: Path) -> None:
    opts = PostgresNode(tmp_path, 15432).server_options()
    for name in ("shared_buffers", "work_mem", "maintenance_work_mem", "max_connections"):
        assert f"-c {name}={SERVER_SETTINGS[name]}" in opts
    command = compose()["postgres"]["command"]
    for name, value in SERVER_SETTINGS.items():
        assert f"-c {name}={value}" in command


def test_compose_caps_each_container_above_its_budget() -> None:
    assert {name: "mem_limit" in svc for name, svc in compose().items()} == {
        "kafka": True,
        "postgres": True,
        "meilisearch": True,
        "gateway": True,
    }


def test_ray_object_store_is_small_and_reaches_the_services() -> None:
    settings = InfraSettings()
    assert settings.ray_object_store_bytes == 256 * 1024 * 1024
    assert settings_env(settings)["CHATLOG_RAY_OBJECT_STORE_BYTES"] == str(256 * 1024 * 1024)
