"""A PostgreSQL start that fails says why in its error, not only where the log was."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from infra.local.postgres import PostgresNode
from infra.local.procs import ServiceError

pytestmark = [pytest.mark.integration]


def test_a_port_held_by_a_client_socket_fails_the_start_with_the_servers_reason(
    tmp_path: Path,
) -> None:
    node = PostgresNode(tmp_path, 0)
    if not node.installed():
        pytest.skip("PostgreSQL is not installed")
    # A bound, never-listening socket: what a client connection's local end looks like to
    # the server's bind. Nothing answers on the port, so the pre-start check passes.
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    try:
        node.port = holder.getsockname()[1]
        with pytest.raises(ServiceError) as failed:
            node.start(timeout_s=20)
    finally:
        holder.close()
        node.stop()
    assert "could not bind" in str(failed.value) or "in use" in str(failed.value)
