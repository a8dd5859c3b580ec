"""Helpers of the cluster tests (`test_cluster.py`): a cluster stack of their own, where
things run on it, and the faults of issue #17 item 3.

The cluster never uses the shared test stack (one broker): it runs the launcher's cluster
profile under `<shared home>/faults/cluster-<id>` (whose parents the Postgres user can
traverse) on ports `CHATLOG_CLUSTER_TEST_PORT_OFFSET` (300) above the defaults: the shared
stack sits at +100 and the dev stack at +0.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka.admin import AdminClient

from infra.cli_infra import start_infra
from infra.harness import Services
from infra.local import LocalStack
from infra.local.kafka import KafkaNode
from infra.local.procs import read_pid, session_members
from infra.local.ray import RayNode
from infra.settings import InfraSettings, cluster_profile
from infra.system import System
from tests.e2e.faults import cmdline, descendants

RECOVER_S = 240.0


@contextlib.contextmanager
def cluster_stack(shared: Services) -> Iterator[tuple[LocalStack, InfraSettings]]:
    """Three brokers, Postgres, Meilisearch and two Ray nodes of our own; removed after."""
    home = shared.home / "faults" / f"cluster-{uuid.uuid4().hex[:8]}"
    home.mkdir(parents=True)
    (home / "tools").symlink_to(shared.home / "tools")
    off = int(os.environ.get("CHATLOG_CLUSTER_TEST_PORT_OFFSET", "300"))
    base = InfraSettings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{19092 + off}",
        postgres_url=f"postgresql://chatlog@127.0.0.1:{15432 + off}/chatlog",
        meili_url=f"http://127.0.0.1:{17700 + off}",
        meili_key=shared.meili_key,
        ray_port=16379 + off,
        ray_object_store_bytes=96 * 1024 * 1024,
    )
    settings = cluster_profile(base).model_copy(update={"home": home})
    stack = LocalStack(settings)
    try:
        start_infra(settings)
        yield stack, settings
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
        for node in stack.ray[:1]:  # the cluster's Ray session files
            shutil.rmtree(node.temp_dir, ignore_errors=True)


def replicas_by_node(stack: LocalStack) -> dict[str, list[int]]:
    """The inference replica processes under each Ray node (a node's raylet spawns them)."""
    out: dict[str, list[int]] = {}
    for node in stack.ray:
        pid = _pid(node)
        kids = descendants(pid) if pid else []
        out[node.name] = [p for p in kids if "ServeReplica:inference" in cmdline(p)]
    return out


def _pid(node: KafkaNode | RayNode) -> int | None:
    return read_pid(node.pidfile)  # the file holds "pid starttime"


def sigkill_node(node: KafkaNode | RayNode) -> None:
    """SIGKILL every process of a node, as its machine's crash would: its process group
    and what left the group but not its session (Ray's workers and actors may)."""
    pid = _pid(node)
    assert pid is not None and node.running(), f"{node.name} is not running"
    os.killpg(pid, signal.SIGKILL)
    for member in session_members(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    # dead, not dying: a raylet still exiting holds the port its restart checks
    until(lambda: not session_members(pid), f"{node.name}'s processes gone")
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    node.pidfile.unlink(missing_ok=True)


def sigkill_service(system: System, name: str) -> None:
    """SIGKILL one service instance (`query_api-2`, `processors`, ...), forget its pid."""
    c = system.service(name)
    pid = read_pid(system.pidfile(c))
    assert pid is not None, f"{name} is not running"
    os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    system.pidfile(c).unlink(missing_ok=True)


def busiest_partition_leader(settings: InfraSettings) -> tuple[int, int]:
    """(partition, leader broker id) of chat.completions' partition with the most events."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topics.completions
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "probe"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta
        }
    finally:
        consumer.close()
    busiest = max(ends, key=lambda p: ends[p])
    return busiest, meta[busiest].leader


def leader_of(settings: InfraSettings, topic: str, partition: int) -> int:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    return int(admin.list_topics(topic, timeout=10).topics[topic].partitions[partition].leader)


def until(check: Any, what: str, timeout_s: float = RECOVER_S) -> None:
    """Poll an observable state (never a sleep standing in for one)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # a part that is coming back raises all sorts
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"no {what} within {timeout_s:.0f}s (last error: {last})")
