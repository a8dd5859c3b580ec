"""`python -m infra.local.ray_start ...`: Ray's own `ray start` CLI, with one fix.

A raylet waits a fixed 15 s for its agents to write their port files and aborts after
that (ray-project/ray#65983, open; no setting lengthens it). On a loaded 2-core machine
the dashboard agent's imports alone took longer, so nodes failed to start about half the
time. Our nodes fix every agent port on the command line (infra/local/ray.py), so the
files' contents are known before the agents run: this writes them just before the raylet
starts (the agents write the same values again once they listen).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from ray import _raylet  # type: ignore[attr-defined]  # compiled, no stubs
from ray._private import services
from ray.scripts.scripts import main

_start_raylet = services.start_raylet


def _start_raylet_with_port_files(*args: Any, **kwargs: Any) -> Any:
    bound = inspect.signature(_start_raylet).bind(*args, **kwargs).arguments
    node_id, session_dir = bound["node_id"], bound["session_dir"]
    raylet: Any = _raylet
    for name, port in (
        (raylet.METRICS_AGENT_PORT_NAME, bound.get("metrics_agent_port")),
        (raylet.DASHBOARD_AGENT_LISTEN_PORT_NAME, bound.get("dashboard_agent_listen_port")),
        (raylet.METRICS_EXPORT_PORT_NAME, bound.get("metrics_export_port")),
        (raylet.RUNTIME_ENV_AGENT_PORT_NAME, bound.get("runtime_env_agent_port")),
    ):
        if port:
            raylet.persist_port(session_dir, node_id, name, port)
    return _start_raylet(*args, **kwargs)


if __name__ == "__main__":
    services.start_raylet = _start_raylet_with_port_files
    sys.exit(main())  # type: ignore[no-untyped-call]
