"""A local Ray node stops at once on SIGTERM (`chatlog down`), without Ray's drain wait."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infra.local.procs import port_open
from infra.local.ray import RayNode

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_node_asked_to_stop_shuts_down_without_draining(tmp_path: Path) -> None:
    # ports below the kernel's ephemeral range, apart from every other test's
    node = RayNode(tmp_path, 0, 23379, object_store_bytes=80 * 1024 * 1024)
    node.start()
    try:
        assert node.healthy()
    finally:
        stopped = node.stop()
        shutil.rmtree(node.temp_dir, ignore_errors=True)
    assert stopped and not node.running() and not port_open(node.port)
    # Ray's default waits up to 30 s for Serve to move replicas off a node before it
    # stops; a local node goes with the whole system, so it is told not to
    assert "Draining for up to" not in node.log.read_text()
