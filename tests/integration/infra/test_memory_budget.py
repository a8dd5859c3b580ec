"""Meilisearch, started by the real launcher, keeps its anonymous memory within budget
while it indexes a few thousand messages the way the search projection sends them."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.harness import Services
from infra.local.meili import MeiliNode
from infra.local.procs import read_pid
from infra.settings import LOCAL_MEILI_KEY
from schemas.resources import search_index_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The process's anonymous memory (README "Memory budget"): 256 MiB of indexing memory plus
# the server's own. Measured here: ~300 MB after 5,000 messages; without the cap, 1.3 GB
# after 1,000 and 2.2 GB after 5,000. File-backed pages of the index (LMDB's map) are page
# cache, reclaimable, and not counted.
MEILI_ANON_BUDGET = 768 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def meili(services: Services, tmp_path: Path) -> Iterator[MeiliNode]:
    if services.source != "local":
        pytest.skip("the launcher's Meilisearch (Docker runs the compose file's)")
    (tmp_path / "tools").symlink_to(services.home / "tools")  # the session's pinned binary
    node = MeiliNode(tmp_path, free_port(), LOCAL_MEILI_KEY)
    node.start()
    yield node
    node.stop()


def rss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc status")


def test_meilisearch_stays_within_its_memory_budget_while_indexing(meili: MeiliNode) -> None:
    import meilisearch

    client = meilisearch.Client(f"http://127.0.0.1:{meili.port}", LOCAL_MEILI_KEY, timeout=60)
    spec = search_index_spec()
    client.wait_for_task(client.create_index("messages", {"primaryKey": "id"}).task_uid)
    client.wait_for_task(client.index("messages").update_settings(spec["settings"]).task_uid)
    rnd = random.Random(12)
    words = ["".join(rnd.choices("abcdefghijklmnopqrstuvwxyz", k=rnd.randint(3, 10)))
             for _ in range(20_000)]  # fmt: skip
    tasks = []
    for batch in range(60):  # 3,000 messages, 50 a task, like the projection's batches
        docs = [
            {
                "id": f"m{batch}-{i}",
                "conversation_id": f"c{batch % 30}",
                "user_id": f"u{batch % 5}",
                "role": "assistant",
                "content": " ".join(rnd.choices(words, k=rnd.randint(20, 200))),
                "title": "budget",
                "created_at": batch,
            }
            for i in range(50)
        ]
        tasks.append(client.index("messages").add_documents(docs, "id").task_uid)
    for uid in tasks:
        assert client.wait_for_task(uid, timeout_in_ms=300_000).status == "succeeded"
    assert client.index("messages").get_stats().number_of_documents == 3_000

    pid = read_pid(meili.pidfile)
    assert pid is not None
    assert rss_anon(pid) < MEILI_ANON_BUDGET, f"RssAnon {rss_anon(pid) >> 20} MiB"
