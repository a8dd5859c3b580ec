"""The faults of issue #17 item 3 on a running cluster, under the chaos run's load.

The chaos run's clients (`bench/chaos.py`), but every request goes through the gateway,
as users' do: a killed query API instance drops their streams and they resume with
`Last-Event-ID` on the other. Meanwhile, in turn: SIGKILL the broker leading
chat.completions' busiest partition, the Ray worker node, one query API instance, one
processors instance; each is restarted once the system shows it noticed (a new leader,
the raylet gone, the pid gone). The checks are the chaos run's, unchanged.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx

from bench.chaos import Client, Plan, Tally
from infra.local import LocalStack
from infra.system import System
from tests.e2e.cluster import (
    busiest_partition_leader,
    leader_of,
    replicas_by_node,
    sigkill_node,
    sigkill_service,
    until,
)


class GatewayClient(Client):
    """A chaos client whose reads and writes all go to the gateway's one origin."""

    def __init__(self, n: int, system: System, key: str, tally: Tally, plan: Plan) -> None:
        super().__init__(n, system, key, tally, plan)
        origin = system.base_url.removesuffix("/v1")
        headers = {"Authorization": f"Bearer {key}"}
        self.cmd = httpx.AsyncClient(base_url=origin, headers=headers, timeout=30)
        self.query = httpx.AsyncClient(
            base_url=origin, headers=headers, timeout=httpx.Timeout(30, read=40)
        )


class ClusterFaults:
    """Kills and restarts the cluster's parts in turn, in a thread (the restarts block)."""

    order = ("broker", "ray_worker", "query_api", "processors")

    def __init__(self, system: System, stack: LocalStack, tally: Tally) -> None:
        self.system, self.stack, self.tally = system, stack, tally
        self.stop = threading.Event()

    def run(self, every_s: float) -> None:
        """Each fault once, in order, `every_s` after the previous one recovered (a broker's
        restart alone took 104 s on the loaded 2 cores: a fixed window would end first)."""
        for name in self.order:
            if self.stop.wait(every_s):
                return
            self.tally.fault(name, getattr(self, name))

    def broker(self) -> None:
        settings = self.system.settings
        partition, leader = busiest_partition_leader(settings)
        node = next(b for b in self.stack.brokers if b.node_id == leader)
        sigkill_node(node)
        topic = settings.topics.completions
        until(lambda: leader_of(settings, topic, partition) not in (leader, -1), "new leader")
        node.start()

    def ray_worker(self) -> None:
        worker = self.stack.ray[1]
        sigkill_node(worker)
        worker.start()
        # Serve places the lost replica again once the node is back
        until(lambda: all(len(v) == 1 for v in replicas_by_node(self.stack).values()),
              "a replica on each node")  # fmt: skip

    def query_api(self) -> None:
        self._restart("query_api-2")

    def processors(self) -> None:
        self._restart("processors-2")

    def _restart(self, name: str) -> None:
        sigkill_service(self.system, name)
        self.system.start(self.system.service(name))


async def drive(plan: Plan, system: System, stack: LocalStack, keys: list[str]) -> Any:
    """The chaos run's load through the gateway, with the cluster's faults; its tally."""
    tally = Tally()
    clients = [
        GatewayClient(n, system, keys[n % len(keys)], tally, plan) for n in range(plan.clients)
    ]
    faults = ClusterFaults(system, stack, tally)
    chaos = asyncio.create_task(asyncio.to_thread(faults.run, plan.fault_every_s))

    async def load(c: GatewayClient) -> None:
        # the steady load lasts as long as the faults do, and at least plan.duration_s
        least = time.monotonic() + plan.duration_s
        while not chaos.done() or time.monotonic() < least:
            await c.loop(time.monotonic() + 1)

    try:
        try:
            await asyncio.gather(*(load(c) for c in clients))
        finally:
            faults.stop.set()
            await chaos
        await asyncio.gather(*(c.stream_untouched() for c in clients))
    finally:
        for c in clients:
            await c.close()
    return tally
