"""`command.admit_batch` decides set-wise when a batch's users are distinct: every verdict
must be what one-at-a-time admission gives, concurrent batches must not deadlock, and the
limits must stay exact across them."""

from __future__ import annotations

import asyncio
import collections
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from command_api.store import CommandStore, _AdmitItem
from infra.auth import create_key, hash_key
from infra.clients import pg_connect
from tests.integration.command_api.conftest import command_settings, running_client

pytestmark = pytest.mark.integration


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _seed(settings, limited: str, capped: str, busy: str, cont: str, keyed: str) -> str:
    """limited: 3 prompts in the window, all over; capped: 2 running; busy and cont: a
    conversation each whose last request is r-prev; keyed: a key (returned)."""
    now = datetime.now(UTC)
    with pg_connect(settings) as conn:
        key = create_key(conn, keyed)
        for user, n, finished in ((limited, 3, True), (capped, 2, False)):
            for i in range(n):
                rid = _id("r")
                conn.execute(
                    "INSERT INTO command.requests (request_id, user_id, conversation_id,"
                    " created_at) VALUES (%s, %s, %s, %s)",
                    (rid, user, _id("c"), now - timedelta(seconds=30 - i)),
                )
                if finished:
                    conn.execute(
                        "INSERT INTO chatlog.completions (request_id, conversation_id, user_id,"
                        " status, model, created_at, updated_at)"
                        " VALUES (%s, 'c', %s, 'finished', 'm', now(), now())",
                        (rid, user),
                    )
        for user, conv in ((busy, "conv-busy"), (cont, "conv-cont")):
            conn.execute(
                "INSERT INTO command.conversations (id, user_id, last_request_id)"
                " VALUES (%s || %s, %s, 'r-prev')",
                (conv, user, user),
            )
    return key


async def test_a_batch_of_distinct_users_gets_every_verdict_as_one_at_a_time(infra_settings):
    settings = command_settings(infra_settings, rate_limit_per_min=3, max_concurrent_generations=2)
    ok, limited, capped, busy, cont, keyed, thief = (
        _id(n) for n in ["ok", "lim", "cap", "busy", "cont", "key", "thief"]
    )
    async with running_client(settings) as client:  # its start-up applies schema command
        store: CommandStore = client._transport.app.state.ctx.store  # type: ignore[attr-defined]
        key = _seed(settings, limited, capped, busy, cont, keyed)
        items = [  # (key hash, user, request, conversation, new?, expected last request)
            ("", ok, "r-ok", _id("c"), True, None),
            ("", limited, "r-lim", _id("c"), True, None),
            ("", capped, "r-cap", _id("c"), True, None),
            ("", busy, "r-busy", f"conv-busy{busy}", False, "r-stale"),
            ("", cont, "r-cont", f"conv-cont{cont}", False, "r-prev"),
            (hash_key("cl-no-such-key"), None, "r-unauth", _id("c"), True, None),
            (hash_key(key), None, "r-key", _id("c"), True, None),
            ("", thief, "r-thief", f"conv-cont{cont}", False, "r-prev"),  # not theirs
        ]
        got = await store._admit_many(items)
    verdicts = [(a.verdict, a.window.used, a.running, a.user_id) for a in got]
    assert verdicts == [
        ("ok", 1, 1, ok),
        ("rate_limited", 3, 0, limited),
        ("too_many_generations", 2, 2, capped),
        ("conversation_busy", 0, 0, busy),
        ("ok", 1, 1, cont),
        ("unauthorized", 0, 0, None),
        ("ok", 1, 1, keyed),
        ("conversation_busy", 0, 0, thief),
    ]
    assert 29 < (got[1].window.oldest_age_s or 0) < 40  # the oldest of the 3, ~30 s ago
    with pg_connect(settings) as conn:
        rows = conn.execute(
            "SELECT request_id FROM command.requests WHERE request_id = ANY(%s) ORDER BY 1",
            ([item[2] for item in items],),
        ).fetchall()
        last = conn.execute(
            "SELECT last_request_id FROM command.conversations WHERE id = %s", (f"conv-cont{cont}",)
        ).fetchone()
    assert [r[0] for r in rows] == ["r-cont", "r-key", "r-ok"]
    assert last == ("r-cont",)


async def test_concurrent_batches_over_shared_users_neither_deadlock_nor_overshoot(
    infra_settings,
):
    settings = command_settings(
        infra_settings, rate_limit_per_min=5, max_concurrent_generations=0, pg_pool_max=8
    )
    users = [_id("u") for _ in range(12)]
    rng = random.Random(7)
    async with running_client(settings) as client:
        store: CommandStore = client._transport.app.state.ctx.store  # type: ignore[attr-defined]

        async def batches() -> list[str]:
            admitted = []
            for _ in range(6):  # distinct users per batch, in a random order
                picked = rng.sample(users, 8)
                items: list[_AdmitItem] = [("", u, _id("r"), _id("c"), True, None) for u in picked]
                got = await store._admit_many(items)
                admitted += [u for u, a in zip(picked, got, strict=True) if a.verdict == "ok"]
            return admitted

        results = await asyncio.gather(*(batches() for _ in range(8)))
    per_user = collections.Counter(u for r in results for u in r)
    assert per_user == {u: 5 for u in users}  # 8 x 6 x 8 = 384 attempts, 5 each admitted
