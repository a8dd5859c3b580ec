"""Three local brokers stop cleanly together (`chatlog down` on the cluster profile).

Stopped one by one, the last ones lost their controller quorum (a majority of the 3
voters) and could not finish a clean shutdown: the last broker sat out the 30 s stop
timeout and was SIGKILLed, its logs left for recovery at the next start.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from infra.harness import Services
from infra.local import LocalStack
from infra.settings import InfraSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_every_broker_of_three_finishes_its_shutdown(services: Services, tmp_path: Path) -> None:
    if services.source != "local":
        pytest.skip("the launcher is what runs brokers without Docker")
    (tmp_path / "tools").symlink_to(services.home / "tools")
    # below the kernel's ephemeral range, apart from every other test's ports
    settings = InfraSettings(
        home=tmp_path,
        kafka_bootstrap="127.0.0.1:23192,127.0.0.1:23194,127.0.0.1:23196",
        postgres_url="postgresql://chatlog@127.0.0.1:23532/chatlog",
        meili_url=None,
        topic_prefix=f"brokers-{uuid.uuid4().hex[:6]}.",
    )
    stack = LocalStack(settings)
    try:
        for broker in stack.brokers:
            broker.start(wait=False)  # ready only once a quorum of its peers runs
        for broker in stack.brokers:
            broker.wait_ready()
    finally:
        stopped = stack.stop()
    assert sorted(stopped) == ["kafka-1", "kafka-2", "kafka-3"]
    for broker in stack.brokers:
        # the shutdown hook's last words: a broker SIGKILLed at its timeout never says them
        last = f"App info kafka.server for {broker.node_id} unregistered"
        assert last in broker.log.read_text(), f"{broker.name} did not finish its shutdown"
