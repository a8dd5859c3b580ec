"""The hub and live streams on real Kafka and Postgres: live delivery, exact resume from
every event id, a stream joined mid-generation, attempts that never mix, ownership."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from infra.settings import InfraSettings
from query_api.events import WHOLE_SEQ
from schemas.events import (
    ChatMessage,
    CompletionFinished,
    CompletionStarted,
    ConversationDeleted,
    GenerationParams,
    PromptSubmitted,
    TokenChunk,
    Usage,
)
from tests.integration.query_api.conftest import (
    Projection,
    Sse,
    Users,
    new_id,
    produce,
    query_settings,
    read_sse,
    serve,
    text_of,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def client(infra_settings: InfraSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(query_settings(infra_settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as c,
    ):
        yield c


class Gen:
    """One request's events, as command_api and an inference replica would produce them."""

    def __init__(self, settings: InfraSettings, producer: AIOKafkaProducer, user: str = "alice"):
        self.topics, self.producer, self.user = settings.topics, producer, user
        self.cid, self.rid = new_id("c"), new_id("r")

    async def submit(self) -> None:
        await produce(
            self.producer,
            self.topics.conversations,
            PromptSubmitted(
                request_id=self.rid,
                conversation_id=self.cid,
                user_id=self.user,
                model="m-1",
                messages=(ChatMessage("user", "hi"),),
                params=GenerationParams(max_tokens=16),
            ),
        )

    async def start(self, attempt: int) -> None:
        await produce(
            self.producer,
            self.topics.completions,
            CompletionStarted(
                request_id=self.rid,
                conversation_id=self.cid,
                attempt=attempt,
                replica_id="r0",
                model="m-1",
            ),
        )

    async def chunks(self, attempt: int, seqs: range) -> None:
        await produce(
            self.producer,
            self.topics.completions,
            *[
                TokenChunk(
                    request_id=self.rid,
                    conversation_id=self.cid,
                    attempt=attempt,
                    seq=s,
                    text=word(attempt, s),
                    token_count=1,
                )
                for s in seqs
            ],
        )

    async def finish(self, attempt: int, n: int) -> None:
        await produce(
            self.producer,
            self.topics.completions,
            CompletionFinished(
                request_id=self.rid,
                conversation_id=self.cid,
                attempt=attempt,
                finish_reason="stop",
                usage=Usage(4, n),
                ttft_ms=9.5,
            ),
        )

    @property
    def url(self) -> str:
        return f"/v1/chat/completions/{self.rid}/stream"


@pytest.fixture
def gen(infra_settings: InfraSettings, producer: AIOKafkaProducer) -> Gen:
    """A fresh request of alice's, produced to this module's topics."""
    return Gen(infra_settings, producer)


def word(attempt: int, seq: int) -> str:
    return f"a{attempt}w{seq} "


def ids(events: list[Sse]) -> list[str | None]:
    return [e.id if e.event != "reset" else "reset" for e in events]


async def test_a_live_stream_delivers_every_chunk_then_done(
    client: httpx.AsyncClient,
    users: Users,
    gen: Gen,
) -> None:
    await gen.submit()
    reader = asyncio.create_task(read_sse(client, gen.url, users.headers("alice")))
    await asyncio.sleep(0.3)
    await gen.start(1)
    await gen.chunks(1, range(6))
    await gen.finish(1, 6)
    events = await reader
    assert ids(events) == [f"1:{s}" for s in range(6)] + ["1:done"]
    assert text_of(events) == "".join(word(1, s) for s in range(6))
    done = events[-1].data
    assert done == {
        "request_id": gen.rid,
        "attempt": 1,
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 4, "completion_tokens": 6},
        "model": "m-1",
        "ttft_ms": 9.5,
    }


async def assert_exact_resume(client: httpx.AsyncClient, users: Users, url: str, n: int) -> None:
    full = await read_sse(client, url, users.headers("alice"))
    assert ids(full) == [f"1:{s}" for s in range(n)] + ["1:done"]
    for k, last in enumerate(ids(full)):
        assert last is not None
        by_header = await read_sse(client, url, users.headers("alice", **{"Last-Event-ID": last}))
        assert ids(by_header) == ids(full)[k + 1 :], last
        assert [e.data for e in by_header] == [e.data for e in full[k + 1 :]]
        by_query = await read_sse(client, f"{url}?starting_after={last}", users.headers("alice"))
        assert ids(by_query) == ids(full)[k + 1 :], last


async def test_resume_from_every_event_id_of_a_request_finished_a_second_ago(
    client: httpx.AsyncClient,
    users: Users,
    gen: Gen,
) -> None:
    await gen.submit()
    await gen.start(1)
    await gen.chunks(1, range(5))
    await gen.finish(1, 5)
    await asyncio.sleep(0.3)  # in the hub's memory, not in Postgres
    await assert_exact_resume(client, users, gen.url, 5)


async def test_resume_from_every_event_id_of_a_request_finished_last_week(
    client: httpx.AsyncClient,
    users: Users,
    projection: Projection,
) -> None:
    cid, rid = new_id("c"), new_id("r")
    projection.prompt("alice", cid, rid, "old")
    projection.chunks(rid, 1, [word(1, s) for s in range(5)])
    projection.finish(rid, 1)  # the hub never saw it: only Postgres has it
    await assert_exact_resume(client, users, f"/v1/chat/completions/{rid}/stream", 5)


async def test_a_stream_joined_mid_generation_gets_the_whole_text(
    users: Users,
    infra_settings: InfraSettings,
    producer: AIOKafkaProducer,
    projection: Projection,
) -> None:
    """The process starts mid-generation: its hub never sees chunks 0-4, and the
    projection has written none of them (or only some), yet clients get the whole text."""
    gens = [Gen(infra_settings, producer) for _ in range(3)]
    for g, projected in zip(gens, (0, 2, 0), strict=True):
        projection.prompt("alice", g.cid, g.rid, "hi")
        await g.start(1)
        await g.chunks(1, range(5))
        if projected:
            projection.chunks(g.rid, 1, [word(1, s) for s in range(projected)])
    async with (
        serve(query_settings(infra_settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as late,
    ):
        # gens[2]: subscribed before the hub has any of its events
        early = asyncio.create_task(read_sse(late, gens[2].url, users.headers("alice")))
        await asyncio.sleep(0.3)
        for g in gens:
            await g.chunks(1, range(5, 8))
        await asyncio.sleep(0.3)
        # gens[0], gens[1]: subscribed while live, after the hub joined mid-way
        mid = [asyncio.create_task(read_sse(late, g.url, users.headers("alice"))) for g in gens[:2]]
        await asyncio.sleep(0.3)
        for g in gens:
            await g.chunks(1, range(8, 10))
            await g.finish(1, 10)
        results = [*await asyncio.gather(*mid), await early]
    whole = "".join(word(1, s) for s in range(10))
    for events in results:
        assert ids(events) == [f"1:{s}" for s in range(10)] + ["1:done"]
        assert text_of(events) == whole


async def test_two_attempts_never_mix(
    client: httpx.AsyncClient,
    users: Users,
    gen: Gen,
) -> None:
    await gen.submit()
    seen: list[Sse] = []
    live = asyncio.create_task(read_sse(client, gen.url, users.headers("alice"), sink=seen))
    await asyncio.sleep(0.3)
    await gen.start(1)
    await gen.chunks(1, range(3))
    while len(seen) < 3:  # the client has attempt 1's text before the retry begins
        await asyncio.sleep(0.02)
    await gen.start(2)  # the replica died; another one retries from scratch
    await gen.chunks(1, range(3, 5))  # a straggler of the dead attempt
    await gen.chunks(2, range(4))
    await gen.finish(2, 4)
    events = await live
    assert ids(events) == ["1:0", "1:1", "1:2", "reset", "2:0", "2:1", "2:2", "2:3", "2:done"]
    assert events[3].data == {"request_id": gen.rid, "attempt": 2}
    assert text_of(events) == "".join(word(2, s) for s in range(4))
    resumed = await read_sse(client, gen.url, users.headers("alice", **{"Last-Event-ID": "1:1"}))
    assert ids(resumed) == ["reset", "2:0", "2:1", "2:2", "2:3", "2:done"]
    fresh = await read_sse(client, gen.url, users.headers("alice"))
    assert ids(fresh) == ["2:0", "2:1", "2:2", "2:3", "2:done"]


async def test_only_the_owner_may_stream(
    client: httpx.AsyncClient,
    users: Users,
    gen: Gen,
) -> None:
    await gen.submit()
    await asyncio.sleep(0.2)
    r = await client.get(gen.url, headers=users.headers("bob"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/v1/chat/completions/nope/stream", headers=users.headers("alice"))
    assert r.status_code == 404
    r = await client.get(gen.url, headers=users.headers("alice", **{"Last-Event-ID": "x"}))
    assert r.status_code == 400


async def test_a_queued_request_gets_heartbeats(
    client: httpx.AsyncClient,
    users: Users,
    gen: Gen,
) -> None:
    await gen.submit()
    lines: list[str] = []

    async def read() -> None:
        async with client.stream("GET", gen.url, headers=users.headers("alice")) as r:
            async for line in r.aiter_lines():
                lines.append(line)
                if line == ": ping":
                    return

    await asyncio.wait_for(read(), 5)
    assert lines == [": ping"]


async def test_a_client_that_goes_away_frees_its_subscription(
    client: httpx.AsyncClient,
    users: Users,
    gen: Gen,
) -> None:
    await gen.submit()
    await gen.start(1)
    await gen.chunks(1, range(2))
    got = await read_sse(client, gen.url, users.headers("alice"), until_end=False, max_events=2)
    assert [e.id for e in got] == ["1:0", "1:1"]  # read_sse hung up after two events

    async def subscribers() -> float:
        text = (await client.get("/metrics")).text
        line = next(x for x in text.splitlines() if x.startswith("chatlog_query_subscribers "))
        return float(line.split()[1])

    for _ in range(100):
        if await subscribers() == 0:
            break
        await asyncio.sleep(0.05)
    assert await subscribers() == 0
    # the generation goes on for whoever comes back: the rest is still served
    await gen.chunks(1, range(2, 4))
    await gen.finish(1, 4)
    rest = await read_sse(client, gen.url, users.headers("alice", **{"Last-Event-ID": "1:1"}))
    assert ids(rest) == ["1:2", "1:3", "1:done"]


async def metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    return float(next(x for x in text.splitlines() if x.startswith(f"{name} ")).split()[1])


async def eventually_404(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
    for _ in range(100):
        r = await client.get(url, headers=headers)
        if r.status_code == 404:
            assert r.json()["error"]["code"] == "not_found"
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} still answers {r.status_code}: {r.text}")


async def test_a_deleted_conversations_requests_answer_404_at_once(
    client: httpx.AsyncClient,
    users: Users,
    gen: Gen,
    projection: Projection,
    infra_settings: InfraSettings,
    producer: AIOKafkaProducer,
) -> None:
    """The projection still has the rows (it lags); the hub read the ConversationDeleted:
    the status, a new stream and a stream already open all say the request is gone."""
    await gen.submit()
    projection.prompt("alice", gen.cid, gen.rid, "hi")
    await gen.start(1)
    await gen.chunks(1, range(3))
    seen: list[Sse] = []
    live = asyncio.create_task(read_sse(client, gen.url, users.headers("alice"), sink=seen))
    while len(seen) < 3:
        await asyncio.sleep(0.02)
    await produce(
        producer,
        infra_settings.topics.conversations,
        ConversationDeleted(conversation_id=gen.cid, user_id="alice"),
    )
    events = await live
    assert ids(events) == ["1:0", "1:1", "1:2", None]
    assert events[-1].event == "error" and events[-1].data["error"]["code"] == "not_found"
    status = f"/v1/chat/completions/{gen.rid}"
    await eventually_404(client, status, users.headers("alice"))
    r = await client.get(gen.url, headers=users.headers("alice"))
    assert r.status_code == 404
    await gen.chunks(1, range(3, 5))  # the generation outlives the deletion: still gone
    await gen.finish(1, 5)
    await asyncio.sleep(0.3)
    assert (await client.get(status, headers=users.headers("alice"))).status_code == 404


async def test_the_status_right_after_done_agrees_with_the_stream(
    client: httpx.AsyncClient,
    users: Users,
    gen: Gen,
    projection: Projection,
) -> None:
    """The projection lags (it has 2 of 5 chunks, no end): the status tells what the
    stream told, not `streaming` with the last chunks missing."""
    await gen.submit()
    projection.prompt("alice", gen.cid, gen.rid, "hi")
    projection.chunks(gen.rid, 1, [word(1, s) for s in range(2)])
    await gen.start(1)
    await gen.chunks(1, range(5))
    await gen.finish(1, 5)
    events = await read_sse(client, gen.url, users.headers("alice"))
    assert events[-1].event == "done"
    r = await client.get(f"/v1/chat/completions/{gen.rid}", headers=users.headers("alice"))
    body = r.json()
    assert (body["status"], body["attempt"], body["finish_reason"]) == ("finished", 1, "stop")
    assert body["text"] == text_of(events) == "".join(word(1, s) for s in range(5))
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 5}
    assert body["timings"]["finished_at"] is not None


async def test_a_finished_answer_whose_chunks_expired_streams_its_whole_text(
    client: httpx.AsyncClient,
    users: Users,
    projection: Projection,
) -> None:
    """A rebuild after chat.completions' retention: the message text, no chunk rows."""
    cid, rid = new_id("c"), new_id("r")
    projection.prompt("alice", cid, rid, "old")
    projection.finish(rid, 2)
    whole = "the whole stored answer, kept by the final event"
    projection.conn.execute(
        "UPDATE chatlog.messages SET content = %s, attempt = 2 WHERE id = %s",
        (whole, f"{rid}:assistant"),
    )
    url = f"/v1/chat/completions/{rid}/stream"
    events = await read_sse(client, url, users.headers("alice"))
    assert ids(events) == [f"2:{WHOLE_SEQ}", "2:done"]
    assert text_of(events) == whole
    resumed = await read_sse(
        client, url, users.headers("alice", **{"Last-Event-ID": f"2:{WHOLE_SEQ}"})
    )
    assert ids(resumed) == ["2:done"]
    # a client that read some of the chunks before they expired (0, 1 and 2 here; even
    # only the first) starts over with the whole text: it never keeps a partial answer
    for last in ("2:2", "2:0"):
        late = await read_sse(client, url, users.headers("alice", **{"Last-Event-ID": last}))
        assert ids(late) == ["reset", f"2:{WHOLE_SEQ}", "2:done"]
        assert text_of(late) == whole
    r = await client.get(f"/v1/chat/completions/{rid}", headers=users.headers("alice"))
    assert r.json()["text"] == whole and r.json()["status"] == "finished"


async def test_requests_the_hub_forgot_stream_from_postgres_once_it_catches_up(
    users: Users,
    infra_settings: InfraSettings,
    producer: AIOKafkaProducer,
    projection: Projection,
) -> None:
    """The hub saw these finish, then dropped them from memory (one by its TTL, one by its
    count bound) while the projection is still behind: a stream opened now must end once
    Postgres has the answer (it used to send heartbeats forever)."""
    settings = query_settings(
        infra_settings, finished_ttl_s=0.1, hub_sweep_s=0.1, hub_max_requests=3
    )
    async with (
        serve(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as c,
    ):
        gens = [Gen(infra_settings, producer) for _ in range(3)]
        for g in gens:
            await g.submit()
            projection.prompt("alice", g.cid, g.rid, "hi")  # ... and nothing more yet
            await g.start(1)
            await g.chunks(1, range(3))
        for g in gens[:2]:
            await g.finish(1, 3)  # these two the TTL forgets; gens[2] is live
        await asyncio.sleep(1.0)
        assert await metric(c, "chatlog_query_hub_buffered_requests") == 1
        assert await metric(c, "chatlog_query_hub_buffered_bytes") > 0
        readers = [
            asyncio.create_task(read_sse(c, g.url, users.headers("alice"), timeout=10))
            for g in gens[:2]
        ]
        await asyncio.sleep(0.5)
        for g in gens[:2]:
            projection.chunks(g.rid, 1, [word(1, s) for s in range(3)])
            projection.finish(g.rid, 1)
        for events in await asyncio.gather(*readers):
            assert ids(events) == ["1:0", "1:1", "1:2", "1:done"]
        # three more live requests: the least recently active one goes (bound: 3 requests)
        for late in [Gen(infra_settings, producer) for _ in range(3)]:
            await late.submit()
            await late.start(1)
            await late.chunks(1, range(2))
        await asyncio.sleep(0.5)
        assert await metric(c, "chatlog_query_hub_buffered_requests") == 3
        evicted = gens[2]
        reader = asyncio.create_task(read_sse(c, evicted.url, users.headers("alice"), timeout=10))
        await asyncio.sleep(0.3)
        await evicted.chunks(1, range(3, 4))  # live again: the rest from the hub ...
        projection.chunks(evicted.rid, 1, [word(1, s) for s in range(3)])  # ... the start
        await evicted.finish(1, 4)
        events = await reader
        assert ids(events) == ["1:0", "1:1", "1:2", "1:3", "1:done"]
        assert text_of(events) == "".join(word(1, s) for s in range(4))


async def test_the_status_of_a_request_the_hub_joined_mid_way_joins_both_sources(
    users: Users,
    infra_settings: InfraSettings,
    producer: AIOKafkaProducer,
    projection: Projection,
) -> None:
    """The hub started after chunks 0-2 (which only Postgres has); it saw 3-4 and the end,
    which the projection has not written yet: the status has the whole text, finished."""
    g = Gen(infra_settings, producer)
    projection.prompt("alice", g.cid, g.rid, "hi")
    await g.start(1)
    await g.chunks(1, range(3))
    projection.chunks(g.rid, 1, [word(1, s) for s in range(3)])
    async with (
        serve(query_settings(infra_settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as late,
    ):
        await g.chunks(1, range(3, 5))
        await g.finish(1, 5)
        events = await read_sse(late, g.url, users.headers("alice"))
        assert text_of(events) == "".join(word(1, s) for s in range(5))
        r = await late.get(f"/v1/chat/completions/{g.rid}", headers=users.headers("alice"))
        body = r.json()
        assert (body["status"], body["text"]) == ("finished", text_of(events))
