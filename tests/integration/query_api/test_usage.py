"""`GET /v1/usage` over what the real usage meter folded from the log: only the caller's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from infra.settings import InfraSettings
from processors.script import Clock, exchange
from schemas.events import Event
from tests.integration.processors.support import processor_settings, publish, with_answers
from tests.integration.processors.test_usage_meter import meter_to_end
from tests.integration.query_api.conftest import Users, query_settings, serve

pytestmark = pytest.mark.integration

DAY1 = datetime(2026, 5, 1, 10, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
# (user, model, day, completion tokens); every prompt costs 3 prompt tokens.
TRAFFIC = [("alice", "small", DAY1, 2), ("alice", "big", DAY1, 3), ("alice", "small", DAY2, 4),
           ("bob", "small", DAY1, 5)]  # fmt: skip


def ts(d: datetime) -> int:
    return int(d.timestamp())


@pytest.fixture(scope="module")
async def client(infra_settings: InfraSettings, users: Users) -> AsyncIterator[httpx.AsyncClient]:
    events: list[Event] = []
    for n, (user, model, day, pieces) in enumerate(TRAFFIC):
        events += exchange(Clock(day), conversation_id=f"c{n}", request_id=f"r{n}",
                           user_id=user, prompt="p", answer=["x"] * pieces, model=model)  # fmt: skip
    settings = processor_settings(infra_settings)
    publish(settings, with_answers(settings, events))
    await meter_to_end(settings)
    async with (
        serve(query_settings(infra_settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
    ):
        yield c


async def test_day_buckets_of_the_callers_own_usage(client, users) -> None:  # type: ignore[no-untyped-def]
    start, end = ts(DAY1.replace(hour=0)), ts(DAY2.replace(hour=0) + timedelta(days=2))
    r = await client.get("/v1/usage", params={"start": start, "end": end, "bucket": "day"},
                         headers=users.headers("alice"))  # fmt: skip
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["object"] == "page" and page["has_more"] is False
    buckets = page["data"]
    assert [(b["start_time"], b["end_time"]) for b in buckets] == [
        (start + i * 86_400, start + (i + 1) * 86_400) for i in range(3)
    ]
    totals = [[(x["model"], x["num_model_requests"], x["input_tokens"], x["output_tokens"])
               for x in b["results"]] for b in buckets]  # fmt: skip
    assert totals == [[(None, 2, 6, 5)], [(None, 1, 3, 4)], []]  # bob's 5 tokens are not here


async def test_group_by_model(client, users) -> None:  # type: ignore[no-untyped-def]
    start = ts(DAY1.replace(hour=0))
    r = await client.get("/v1/usage", params={"start": start, "end": start + 86_400,
                                              "group_by": "model"},
                         headers=users.headers("alice"))  # fmt: skip
    results = r.json()["data"][0]["results"]
    assert [(x["model"], x["output_tokens"], x["num_cancelled_requests"]) for x in results] == [
        ("big", 3, 0),
        ("small", 2, 0),
    ]


async def test_bad_ranges_and_keys_get_openai_errors(client, users) -> None:  # type: ignore[no-untyped-def]
    h = users.headers("alice")
    for params in ({"start": 100, "end": 100}, {"start": 0, "end": 10**10},
                   {"start": 0, "bucket": "hour"}, {"start": 10**13}, {}):  # fmt: skip
        r = await client.get("/v1/usage", params=params, headers=h)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = await client.get("/v1/usage", params={"start": 0}, headers={"Authorization": "Bearer x"})
    assert r.status_code == 401
