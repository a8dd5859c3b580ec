"""Benchmark: the query API's own CPU per live SSE event, in one process, no sockets.

    .venv/bin/python -m bench.query_fanout --streams 1000 --ticks 50 --rounds 5

(`-m` from the repository root: run as a script, `bench/query_api.py` would shadow the
`query_api` package.)

`bench/query_api.py` measures the whole box (Kafka, client processes, the kernel's socket
writes) and varies with it; this isolates the Python path a live chunk takes inside the
server: the hub's fold and frame, the subscriber's wake-up, the stream's generator and
assembler, and the ASGI send chain of the real app (FastAPI's middlewares, routing done
once per stream). The ASGI server's `send` is a no-op that counts bytes, so uvicorn's own
per-frame work and the socket write are NOT included (about a third of the server's CPU
under the full bench). Runs without services: the hub is fed its records' fields directly
(no Kafka fetch) and every stream is opened on a request the hub saw from its first chunk
(no Postgres read). Reports microseconds of CPU per delivered event, per round.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import uvloop
from confluent_kafka import Message

from query_api.app import create_app
from query_api.deps import current_user
from query_api.settings import QuerySettings
from schemas.events import ChatMessage, GenerationParams, PromptSubmitted
from schemas.wire import TOKEN_CHUNK_V1_HEADERS, put_long, put_string


def chunk_v1(rid: str, cid: str, attempt: int, seq: int, text: str, occurred_ms: int) -> bytes:
    """A TokenChunk v1 body, as `schemas.wire` reads it (tests/unit/schemas check the
    reader against `schemas.encode`)."""
    out = bytearray()
    put_string(out, str(uuid.uuid4()))
    put_long(out, occurred_ms)
    put_string(out, rid)
    put_string(out, cid)
    put_long(out, attempt)
    put_long(out, seq)
    put_string(out, text)
    out += b"\x02\x00"  # token_count 1, traceparent null
    return bytes(out)


async def run(streams: int, ticks: int, rounds: int) -> list[float]:
    settings = QuerySettings(meili_url=None, postgres_url="postgresql://unused@127.0.0.1:1/x")
    app = create_app(settings)

    async def bench_user() -> str:
        return "bench"

    app.dependency_overrides[current_user] = bench_user
    hub = app.state.query.hub
    rids = [f"r-{i:06d}" for i in range(streams)]
    for i, rid in enumerate(rids):
        hub._learn_owner(
            PromptSubmitted(
                request_id=rid,
                conversation_id=f"c-{i}",
                user_id="bench",
                model="m",
                messages=(ChatMessage("user", "hi"),),
                params=GenerationParams(max_tokens=4),
            )
        )
        hub._fold_chunk(rid, f"c-{i}", 0, 0, "Hello", 1, time.time(), i % 12, i)
    frames = [0]

    async def send(message: MutableMapping[str, Any]) -> None:
        frames[0] += message.get("body", b"").count(b"event: chunk\n")

    never = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, Any]:
        await never
        return {"type": "http.disconnect"}

    tasks = []
    for rid in rids:
        path = f"/v1/chat/completions/{rid}/stream"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"bench"), (b"authorization", b"Bearer x")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8001),
            "state": {},
        }
        tasks.append(asyncio.ensure_future(app(scope, receive, send)))
    deadline = time.monotonic() + 60
    while hub.subscriber_count < streams and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # sync dependencies run in FastAPI's thread pool
    failed = [t.exception() for t in tasks if t.done()]
    if failed or hub.subscriber_count != streams:
        raise RuntimeError(f"{hub.subscriber_count} of {streams} streams open: {failed[:1]!r}")
    gc.collect()
    gc.freeze()
    results = []
    seq, topic = 1, settings.topics.completions
    for _ in range(rounds):
        batches = []  # the fetched records, built before the clock starts
        for _ in range(ticks):
            now_ms = int(time.time() * 1000)
            batches.append(
                [
                    Message(
                        topic=topic,
                        partition=i % 12,
                        offset=seq * streams + i,
                        value=chunk_v1(rid, f"c-{i}", 0, seq, " token", now_ms),
                        headers=list(TOKEN_CHUNK_V1_HEADERS),
                    )
                    for i, rid in enumerate(rids)
                ]
            )
            seq += 1
        cpu = time.process_time()
        for batch in batches:
            for record in batch:
                hub._handle(record, topic)
            hub.write_held()  # as the hub's loop does after each fetched batch
            await asyncio.sleep(0)  # every woken stream writes its frame
            await asyncio.sleep(0)
        results.append(1e6 * (time.process_time() - cpu) / (ticks * streams))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    expected = streams * (1 + ticks * rounds)
    if frames[0] != expected:
        raise RuntimeError(f"{frames[0]} chunk frames written, {expected} expected")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    gc.set_threshold(70_000, 20, 100)  # as infra.runtime.tune_gc
    per_round = uvloop.run(run(args.streams, args.ticks, args.rounds))
    print(
        {
            "streams": args.streams,
            "us_per_event_rounds": [round(r, 2) for r in per_round],
            "us_per_event_median": round(statistics.median(per_round), 2),
        }
    )


if __name__ == "__main__":
    main()
