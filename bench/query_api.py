"""Benchmark: one query API process, N SSE clients, each receiving chunk events at 20/s.

    CHATLOG_TEST_KEEP=1 .venv/bin/python bench/query_api.py --clients 100 1000 2000 --seconds 10

Runs on the shared test stack (a private topic prefix and database, dropped after). One
`python -m query_api` process serves; client processes (raw sockets, to keep the client
side cheap) hold the streams; this process produces one TokenChunk per request every 50 ms
(staggered), each carrying its produce time, so a client measures produced -> received.
Memory per client = the server's RSS growth once all N streams are open, divided by N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from infra.auth import create_key
from infra.clients import pg_connect, producer_config
from infra.harness import isolated_settings, provide_services
from infra.settings import InfraSettings
from schemas import encode
from schemas.events import (
    ChatMessage,
    CompletionFinished,
    Event,
    GenerationParams,
    PromptSubmitted,
    TokenChunk,
    Usage,
)

RATE_HZ = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _client(port: int, key: str, rid: str, lags: list[float], opened: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(
        f"GET /v1/chat/completions/{rid}/stream HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(head.decode(errors="replace"))
    opened[0] += 1
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b'data: {"request_id"') and b'"text"' in line:
            now = time.time()
            lags.append(now - float(json.loads(line[6:])["text"]))
        elif line.startswith(b"event: done"):
            break
    writer.close()


def client_process(port: int, key: str, rids: list[str], ready: Any, results: Any) -> None:
    async def main() -> None:
        lags: list[float] = []
        opened = [0]
        tasks = []
        for i, rid in enumerate(rids):
            tasks.append(asyncio.create_task(_client(port, key, rid, lags, opened)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # do not SYN-flood the accept queue
        while opened[0] < len(rids):
            await asyncio.sleep(0.05)
        ready.put(len(rids))
        await asyncio.gather(*tasks)
        results.put(lags)

    asyncio.run(main())


def produce(producer: Producer, topic: str, event: Event) -> None:
    value, headers = encode(event)
    while True:
        try:
            producer.produce(topic, key=event.key, value=value, headers=headers)
            return
        except BufferError:
            producer.poll(0.01)


def run_once(
    settings: InfraSettings,
    port: int,
    server_pid: int,
    key: str,
    n: int,
    seconds: float,
    procs: int,
    per_request: int = 1,
) -> dict[str, float]:
    topics = settings.topics
    producer = Producer(producer_config(settings))
    requests = [f"b-{uuid.uuid4().hex[:12]}" for _ in range(max(1, n // per_request))]
    rids = requests
    cids = {rid: f"c-{rid}" for rid in rids}
    for rid in rids:
        produce(
            producer,
            topics.conversations,
            PromptSubmitted(
                request_id=rid,
                conversation_id=cids[rid],
                user_id="bench",
                model="m",
                messages=(ChatMessage("user", "hi"),),
                params=GenerationParams(max_tokens=8),
            ),
        )
    producer.flush(30)
    time.sleep(1.0)  # the hub learns the owners
    rss_before = rss_kib(server_pid)
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    streams = [requests[i % len(requests)] for i in range(n)]  # per_request clients each
    shares = [streams[i::procs] for i in range(procs)]
    workers = [
        ctx.Process(target=client_process, args=(port, key, s, ready, results)) for s in shares
    ]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=120)
    time.sleep(0.5)
    rss_open = rss_kib(server_pid)
    # 20 chunks/s per request, spread evenly over each 50 ms period
    period, slots = 1.0 / RATE_HZ, 10
    per_slot = [rids[i::slots] for i in range(slots)]
    start = time.monotonic()
    seq = 0
    while time.monotonic() - start < seconds:
        tick = start + seq * period
        for i, group in enumerate(per_slot):
            target = tick + i * period / slots
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for rid in group:
                produce(
                    producer,
                    topics.completions,
                    TokenChunk(
                        request_id=rid,
                        conversation_id=cids[rid],
                        attempt=1,
                        seq=seq,
                        text=f"{time.time():.6f}",
                        token_count=1,
                    ),
                )
            producer.poll(0)
        seq += 1
    rss_live = rss_kib(server_pid)
    for rid in rids:
        produce(
            producer,
            topics.completions,
            CompletionFinished(
                request_id=rid,
                conversation_id=cids[rid],
                attempt=1,
                finish_reason="stop",
                usage=Usage(1, seq),
            ),
        )
    producer.flush(30)
    lags: list[float] = []
    for _ in workers:
        lags += results.get(timeout=120)
    for w in workers:
        w.join(10)
    lags.sort()
    expected = n * seq
    return {
        "clients": n,
        "requests": len(requests),
        "chunks_expected": expected,
        "chunks_received": len(lags),
        "p50_ms": 1000 * statistics.median(lags),
        "p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))],
        "max_ms": 1000 * lags[-1],
        "kib_per_client_open": (rss_open - rss_before) / n,
        "kib_per_client_live": (rss_live - rss_before) / n,
    }


def server_lag(port: int) -> dict[str, float]:
    """Share of events the server wrote within 10/50/100 ms of production (cumulative)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("chatlog_query_delivery_lag_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    total = buckets.get("+Inf", 0.0) or 1.0
    return {
        f"server_le_{int(float(le) * 1000)}ms": round(buckets[le] / total, 3)
        for le in ("0.01", "0.05", "0.1")
        if le in buckets
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--clients-per-request",
        type=int,
        default=1,
        help="SSE clients watching each request (1: every client its own)",
    )
    args = parser.parse_args()
    os.environ.setdefault("CHATLOG_TEST_KEEP", "1")
    with provide_services() as services, isolated_settings(services, "bench_query_api") as s:
        with pg_connect(s, autocommit=True) as conn:
            key = create_key(conn, "bench")
        port = free_port()
        env = {
            **os.environ,
            "CHATLOG_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "CHATLOG_TOPIC_PREFIX": s.topic_prefix,
            "CHATLOG_POSTGRES_URL": s.postgres_url,
            "CHATLOG_MEILI_URL": s.meili_url or "",
            "CHATLOG_INDEX_PREFIX": s.index_prefix,
            "CHATLOG_QUERY_PORT": str(port),
            "CHATLOG_QUERY_POOL_SIZE": "10",
            "CHATLOG_CLIENT_QUEUE_SIZE": "1024",
        }
        server = subprocess.Popen([sys.executable, "-m", "query_api"], env=env)
        if profile := os.environ.get("BENCH_PYSPY"):  # a path: sample the server with py-spy
            subprocess.Popen(
                ["py-spy", "record", "-o", profile, "-f", "raw", "-p", str(server.pid), "-d", "25"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
                    break
                except Exception:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("query API did not become ready") from None
                    time.sleep(0.3)
            for n in args.clients:
                result = run_once(
                    s,
                    port,
                    server.pid,
                    key,
                    n,
                    args.seconds,
                    args.client_procs,
                    args.clients_per_request,
                )
                result |= server_lag(port)
                print(
                    json.dumps(
                        {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
                    ),
                    flush=True,
                )
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
