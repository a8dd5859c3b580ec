"""Process-level tuning shared by the long-running Python services."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a server that holds many live objects.

    Measured in the query API (1,000 SSE streams x 20 events/s, `bench/query_api.py`): its
    hub keeps every live request's chunks, hundreds of thousands of small objects, and
    with CPython's default thresholds a full collection walked all of them about once a
    second: collections were ~40 % of the process's CPU and each full one paused the
    event loop ~200 ms (most of the stream's p99). Start-up's objects are frozen (never
    scanned again) and collections run after 100x more allocations. Reference counting
    still frees everything acyclic at once, and cycles are still collected.
    Call it once, in the process's entry point, after the app is built.
    """
    gc.freeze()
    gc.set_threshold(70_000, 20, 100)
