"""Benchmark: one query API process, N SSE clients, each receiving chunk events at 20/s.

    CHATLOG_TEST_KEEP=1 .venv/bin/python bench/query_api.py --clients 100 1000 2000 --seconds 10

Runs on the shared test stack (a private topic prefix and database, dropped after). One
`python -m query_api` process serves; client processes (raw sockets, to keep the client
side cheap; each checks its chunk ids have no gap and no duplicate) hold the streams;
`--producer-procs` processes produce one TokenChunk per request every 50 ms (staggered, one
shared clock), each carrying its produce time, so a client measures produced -> received.
Memory per client = the server's RSS growth once all N streams are open, divided by N;
server CPU per event = its user+system CPU over the run / chunk events delivered.
`--server-root DIR` serves from another copy of `query_api/` + `schemas/` (A/B runs).
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

import uvloop
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _client(
    port: int, key: str, rid: str, lags: list[float], opened: list[int], errors: list[str]
) -> None:
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
    # Whole reads split into SSE frames (cheap on the client's share of the cores); the
    # body is chunked transfer encoding, whose size lines fall between frames here.
    buf, next_seq = b"", 0
    while True:
        data = await reader.read(1 << 16)
        if not data:
            errors.append(f"{rid}: closed before done")
            break
        now = time.time()
        *frames, buf = (buf + data).split(b"\n\n")
        for frame in frames:
            start = frame.find(b"event: ")
            if frame.startswith(b"chunk", start + 7):
                i = frame.index(b"id: 1:") + 6
                seq = int(frame[i : frame.index(b"\n", i)])
                if seq != next_seq:  # the no-gap/no-duplicate contract, checked per client
                    errors.append(f"{rid}: seq {seq} after {next_seq - 1}")
                next_seq = seq + 1
                i = frame.index(b'"text": "') + 9
                lags.append(now - float(frame[i : frame.index(b'"', i)]))
            elif frame.startswith(b"done", start + 7):
                writer.close()
                return
            elif frame.startswith(b"error", start + 7):
                errors.append(f"{rid}: {frame[start:].decode(errors='replace')}")
                writer.close()
                return


def client_process(port: int, key: str, rids: list[str], ready: Any, results: Any) -> None:
    async def main() -> None:
        lags: list[float] = []
        errors: list[str] = []
        opened = [0]
        tasks = []
        for i, rid in enumerate(rids):
            tasks.append(asyncio.create_task(_client(port, key, rid, lags, opened, errors)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # do not SYN-flood the accept queue
        while opened[0] < len(rids):
            await asyncio.sleep(0.05)
        ready.put(len(rids))
        await asyncio.gather(*tasks)
        results.put((lags, errors))

    uvloop.run(main())


def producer_process(
    settings: InfraSettings, rids: list[str], ticks: int, go: Any, done: Any
) -> None:
    """20 chunks/s for each of `rids` (staggered over each 50 ms), then their finish."""
    topic = settings.topics.completions
    producer = Producer(producer_config(settings))
    done.put(None)  # ready: the start time comes back on `go`
    start = go.get()
    period, slots = 1.0 / RATE_HZ, 10
    per_slot = [rids[i::slots] for i in range(slots)]
    behind = 0.0
    for seq in range(ticks):
        tick = start + seq * period
        for i, group in enumerate(per_slot):
            target = tick + i * period / slots
            delay = target - time.time()
            if delay > 0:
                time.sleep(delay)
            else:
                behind = max(behind, -delay)
            for rid in group:
                produce(
                    producer,
                    topic,
                    TokenChunk(
                        request_id=rid,
                        conversation_id=f"c-{rid}",
                        attempt=1,
                        seq=seq,
                        text=f"{time.time():.6f}",
                        token_count=1,
                    ),
                )
            producer.poll(0)
    elapsed = time.time() - start
    for rid in rids:
        produce(
            producer,
            topic,
            CompletionFinished(
                request_id=rid,
                conversation_id=f"c-{rid}",
                attempt=1,
                finish_reason="stop",
                usage=Usage(1, ticks),
            ),
        )
    producer.flush(30)
    done.put((elapsed, behind))


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
    producer_procs: int = 2,
) -> dict[str, Any]:
    topics = settings.topics
    producer = Producer(producer_config(settings))
    pprocs = producer_procs
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
    # P producer processes, each 20/s for its share of the requests, on one shared clock
    ticks = int(seconds * RATE_HZ)
    go, done = ctx.Queue(), ctx.Queue()
    producers = [
        ctx.Process(target=producer_process, args=(settings, rids[i::pprocs], ticks, go, done))
        for i in range(min(pprocs, len(rids)))
    ]
    for p in producers:
        p.start()
    for _ in producers:
        done.get(timeout=60)
    start = time.time() + 0.2
    for _ in producers:
        go.put(start)
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds(server_pid)
    time.sleep(max(0.0, start + seconds / 2 - time.time()))
    rss_live = rss_kib(server_pid)
    finished = [done.get(timeout=seconds * 10 + 60) for _ in producers]
    elapsed = max(e for e, _ in finished)
    lags: list[float] = []
    errors: list[str] = []
    for _ in workers:
        part, errs = results.get(timeout=120)
        lags += part
        errors += errs
    server_cpu = cpu_seconds(server_pid) - cpu_before
    load_after = os.getloadavg()[0]
    for w in workers + producers:
        w.join(10)
    lags.sort()
    expected = n * ticks
    if errors:
        kinds: dict[str, int] = {}
        for e in errors:
            kind = e.split(": ", 1)[1][:120]
            kinds[kind] = kinds.get(kind, 0) + 1
        print("stream errors:", sorted(kinds.items(), key=lambda kv: -kv[1])[:5], flush=True)
    return {
        "clients": n,
        "requests": len(requests),
        "chunks_expected": expected,
        "chunks_received": len(lags),
        "stream_errors": len(errors),
        "offered_per_s": expected / elapsed,
        "producer_behind_ms": 1000 * max(b for _, b in finished),
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_event": 1e6 * server_cpu / max(1, len(lags)),
        "load_before_after": f"{load_before:.1f}/{load_after:.1f}",
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
    parser.add_argument("--producer-procs", type=int, default=2)
    parser.add_argument(
        "--server-root",
        default=None,
        help="run `python -m query_api` from this directory (a copy of query_api/ and "
        "schemas/ to compare against; infra/ still comes from this checkout)",
    )
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
        server = subprocess.Popen(
            [sys.executable, "-m", "query_api"], env=env, cwd=args.server_root or None
        )
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
                    args.producer_procs,
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
