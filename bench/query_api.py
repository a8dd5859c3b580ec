"""Benchmark: query API processes (one, or several sharing the partitions), N SSE clients,
each receiving chunk events at 20/s.

    CHATLOG_TEST_KEEP=1 .venv/bin/python bench/query_api.py --clients 100 1000 2000 --seconds 10

Runs on the shared test stack (a private topic prefix and database, dropped after). One
`python -m query_api` process serves (`--instances 2`: two, each reading its share of the
partitions, the clients through the gateway, which routes each stream to its owner,
CPU, memory and the server-side lag summed over them); client processes (raw sockets, to keep the client
side cheap; each checks its chunk ids have no gap and no duplicate) hold the streams;
`--producer-procs` processes produce one TokenChunk per request every 50 ms (staggered, one
shared clock), each carrying its produce time, so a client measures produced -> received.
Memory per client = the server's RSS growth once all N streams are open, divided by N;
server CPU per event = its user+system CPU over the run / chunk events delivered. Each
level runs `--warmup` seconds of load first (delivered and checked, not measured).
`--server-root DIR` serves from another copy of `query_api/` + `schemas/` (A/B runs).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
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
from schemas.wire import put_long, put_string

RATE_HZ = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(pid: int) -> float:
    """CPU of `pid`'s session: nginx's master and its workers."""
    from infra.local.procs import session_members

    return sum(cpu_seconds(p) for p in session_members(pid))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _SseClient(asyncio.Protocol):
    """One SSE stream, parsed in `data_received` (no StreamReader, no task per client):
    the clients share the 2 cores with the server, so they must stay cheap."""

    def __init__(
        self, request: bytes, rid: str, lags: list[tuple[float, float]], errors: list[str]
    ) -> None:
        self.request, self.rid, self.lags, self.errors = request, rid, lags, errors
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head: bytes | None = None
        self.buf, self.next_seq = b"", 0
        self.transport: Any = None  # uvloop's TCPTransport

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        data = self.buf + data
        if self.head is None:
            if b"\r\n\r\n" not in data:
                self.buf = data
                return
            self.head, data = data.split(b"\r\n\r\n", 1)
            if b" 200 " not in self.head.split(b"\r\n", 1)[0]:
                self.opened.set_exception(RuntimeError(self.head.decode(errors="replace")))
                return
            self.opened.set_result(None)
        # the body is chunked transfer encoding, whose size lines fall between frames here
        *frames, self.buf = data.split(b"\n\n")
        for frame in frames:
            start = frame.find(b"event: ")
            if frame.startswith(b"chunk", start + 7):
                i = frame.index(b"id: 1:") + 6
                seq = int(frame[i : frame.index(b"\n", i)])
                if seq != self.next_seq:  # the no-gap/no-duplicate contract, per client
                    self.errors.append(f"{self.rid}: seq {seq} after {self.next_seq - 1}")
                self.next_seq = seq + 1
                i = frame.index(b'"text": "') + 9
                produced = float(frame[i : frame.index(b'"', i)])
                self.lags.append((produced, now - produced))
            elif frame.startswith(b"done", start + 7):
                self._finish()
                return
            elif frame.startswith(b"error", start + 7):
                self.errors.append(f"{self.rid}: {frame[start:].decode(errors='replace')}")
                self._finish()
                return

    def _finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.closed.done():
            self.closed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.errors.append(f"{self.rid}: closed before done")
            self.closed.set_result(None)
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(f"{self.rid}: closed before the headers"))


def client_process(port: int, key: str, rids: list[str], ready: Any, results: Any) -> None:
    # Each client process collects ~100,000 (time, lag) samples: a full collection over
    # them would stall it for tens of ms and show up as a lag spike that is not the
    # server's. Short-lived and cycle-free: no collector needed.
    gc.disable()

    async def main() -> None:
        lags: list[tuple[float, float]] = []  # (produced at, lag) per chunk
        errors: list[str] = []
        loop = asyncio.get_running_loop()
        clients = []
        for i, rid in enumerate(rids):
            request = (
                f"GET /v1/chat/completions/{rid}/stream HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
            client = _SseClient(request, rid, lags, errors)
            await loop.create_connection(lambda c=client: c, "127.0.0.1", port)
            clients.append(client)
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # do not SYN-flood the accept queue
        await asyncio.gather(*(c.opened for c in clients))
        ready.put(len(rids))
        cpu_before = time.process_time()
        await asyncio.gather(*(c.closed for c in clients))
        results.put((lags, errors, time.process_time() - cpu_before))

    uvloop.run(main())


def producer_process(
    settings: InfraSettings, rids: list[str], ticks: int, linger_ms: int, go: Any, done: Any
) -> None:
    """20 chunks/s for each of `rids` (staggered over each 50 ms), then their finish.

    `linger_ms`: the producer's batching wait. Each chunk carries its creation time, so
    the linger counts in the measured lag; it only spares the broker's (shared) CPU.
    """
    gc.disable()  # a collection pause would delay the chunks it stamps (see client_process)
    topic = settings.topics.completions
    producer = Producer({**producer_config(settings), "linger.ms": linger_ms})
    done.put(None)  # ready: the start time comes back on `go`
    start = go.get()
    cpu_before = time.process_time()
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
                now = time.time()
                value = chunk_v1(rid, f"c-{rid}", seq, f"{now:.6f}", int(now * 1000))
                while True:
                    try:
                        producer.produce(topic, key=f"c-{rid}", value=value, headers=CHUNK_HEADERS)
                        break
                    except BufferError:
                        producer.poll(0.01)
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
    done.put((elapsed, behind, time.process_time() - cpu_before))


CHUNK_HEADERS = [("event-type", b"TokenChunk"), ("schema-version", b"1")]


def chunk_v1(rid: str, cid: str, seq: int, text: str, occurred_ms: int) -> bytes:
    """A TokenChunk v1 body (attempt 1, one token) built by hand: `schemas.encode` costs
    the producers ~20 µs per chunk, CPU the bench would take from the server it measures.
    `check_chunk_v1` proves it byte-identical to `schemas.encode` before every run."""
    out = bytearray()
    put_string(out, str(uuid.uuid4()))
    put_long(out, occurred_ms)
    put_string(out, rid)
    put_string(out, cid)
    out += b"\x02"  # attempt 1
    put_long(out, seq)
    put_string(out, text)
    out += b"\x02\x00"  # token_count 1, traceparent null
    return bytes(out)


def check_chunk_v1() -> None:
    value = chunk_v1("r-é", "c", 300, "1.5", 1_700_000_000_123)
    event = TokenChunk(
        event_id=str(uuid.UUID(bytes=b"\0" * 16)),
        occurred_at=datetime.fromtimestamp(1_700_000_000.123, UTC),
        request_id="r-é",
        conversation_id="c",
        attempt=1,
        seq=300,
        text="1.5",
        token_count=1,
    )
    expected, headers = encode(event)
    assert headers == CHUNK_HEADERS
    # the event ids differ (random vs fixed), both 36 characters: compare after them
    assert value[37:] == expected[37:] and len(value) == len(expected), (value, expected)


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
    ports: list[int],
    server_pids: list[int],
    key: str,
    n: int,
    seconds: float,
    procs: int,
    per_request: int = 1,
    producer_procs: int = 1,
    linger_ms: int = 5,
    kafka_pid: int | None = None,
    warmup: float = 2.0,
    client_port: int | None = None,
    gateway_pid: int | None = None,
) -> dict[str, Any]:
    """One load level: `warmup` seconds of load that is delivered and checked but not
    measured (a fresh server process, and a broker's JIT after a restart, are slower for
    their first seconds), then `seconds` measured."""
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
    rss_before = sum(map(rss_kib, server_pids))
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    streams = [requests[i % len(requests)] for i in range(n)]  # per_request clients each
    shares = [streams[i::procs] for i in range(procs)]
    workers = [
        ctx.Process(target=client_process, args=(client_port or ports[0], key, s, ready, results))
        for s in shares
    ]
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=120)
    time.sleep(0.5)
    rss_open = sum(map(rss_kib, server_pids))
    # P producer processes, each 20/s for its share of the requests, on one shared clock
    ticks = int((warmup + seconds) * RATE_HZ)
    go, done = ctx.Queue(), ctx.Queue()
    producers = [
        ctx.Process(
            target=producer_process, args=(settings, rids[i::pprocs], ticks, linger_ms, go, done)
        )
        for i in range(min(pprocs, len(rids)))
    ]
    for p in producers:
        p.start()
    for _ in producers:
        done.get(timeout=60)
    start = time.time() + 0.2
    for _ in producers:
        go.put(start)
    measured_from = start + warmup
    time.sleep(max(0.0, measured_from - time.time()))
    load_before = os.getloadavg()[0]
    cpu_before = sum(map(cpu_seconds, server_pids))
    kafka_before = cpu_seconds(kafka_pid) if kafka_pid else 0.0
    gateway_before = session_cpu_seconds(gateway_pid) if gateway_pid else 0.0
    lag_before = server_lag_buckets(ports)
    time.sleep(max(0.0, measured_from + seconds / 2 - time.time()))
    rss_live = sum(map(rss_kib, server_pids))
    finished = [done.get(timeout=seconds * 10 + 60) for _ in producers]
    elapsed = max(e for e, _, _ in finished)
    timed: list[tuple[float, float]] = []
    errors: list[str] = []
    clients_cpu = 0.0
    for _ in workers:
        part, errs, cpu = results.get(timeout=120)
        timed += part
        errors += errs
        clients_cpu += cpu
    server_cpu = sum(map(cpu_seconds, server_pids)) - cpu_before
    kafka_cpu = cpu_seconds(kafka_pid) - kafka_before if kafka_pid else 0.0
    gateway_cpu = session_cpu_seconds(gateway_pid) - gateway_before if gateway_pid else 0.0
    lag_after = server_lag_buckets(ports)
    load_after = os.getloadavg()[0]
    for w in workers + producers:
        w.join(10)
    received = len(timed)
    timed = [(produced, lag) for produced, lag in timed if produced >= measured_from]
    delivered = max(1, len(timed))  # the measured window's chunk events
    # the clients' and producers' CPU covers the warm-up too: per event of the whole run
    everything = max(1, received)
    lags = sorted(lag for _, lag in timed)
    timeline = per_second_p99(timed, measured_from)
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
        "chunks_received": received,
        "chunks_measured": len(lags),
        "stream_errors": len(errors),
        "offered_per_s": expected / elapsed,
        "producer_behind_ms": 1000 * max(b for _, b, _ in finished),
        "server_cpu_s": server_cpu,
        "server_cpu_us_per_event": 1e6 * server_cpu / delivered,
        # the bench's own load on the shared cores, per delivered event
        "clients_cpu_us_per_event": 1e6 * clients_cpu / everything,
        "producers_cpu_us_per_event": 1e6 * sum(c for _, _, c in finished) / everything,
        "kafka_cpu_us_per_event": 1e6 * kafka_cpu / delivered,
        "gateway_cpu_us_per_event": 1e6 * gateway_cpu / delivered,
        "load_before_after": f"{load_before:.1f}/{load_after:.1f}",
        "p50_ms": 1000 * statistics.median(lags),
        "p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))],
        "max_ms": 1000 * lags[-1],
        "p99_ms_per_second": timeline,
        "kib_per_client_open": (rss_open - rss_before) / n,
        "kib_per_client_live": (rss_live - rss_before) / n,
        **server_lag(lag_before, lag_after),
    }


def per_second_p99(timed: list[tuple[float, float]], start: float) -> list[int]:
    """p99 lag (ms) of the chunks produced in each second of the run: shows whether a tail
    is a steady state or one stall."""
    seconds: dict[int, list[float]] = {}
    for produced, lag in timed:
        seconds.setdefault(int(produced - start), []).append(lag)
    return [round(1000 * sorted(v)[int(0.99 * (len(v) - 1))]) for _, v in sorted(seconds.items())]


def broker_pid(home: Path) -> int | None:
    """The local launcher's Kafka broker (its CPU is reported too), if it runs one."""
    try:
        pid = int((home / "run" / "kafka.pid").read_text().split()[0])
        cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def server_lag_buckets(ports: list[int]) -> dict[str, float]:
    """The servers' delivery-lag histogram (cumulative counts by upper bound, summed)."""
    buckets: dict[str, float] = {}
    for port in ports:
        url = f"http://127.0.0.1:{port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith("chatlog_query_delivery_lag_seconds_bucket"):
                le = line.split('le="')[1].split('"')[0]
                buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def server_lag(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Share of the window's events the server wrote within 10/50/100 ms of production."""
    total = (after.get("+Inf", 0.0) - before.get("+Inf", 0.0)) or 1.0
    return {
        f"server_le_{int(float(le) * 1000)}ms": round((after[le] - before.get(le, 0.0)) / total, 3)
        for le in ("0.01", "0.05", "0.1")
        if le in after
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured, per level")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of load before each measured window"
    )
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--producer-procs", type=int, default=1)
    parser.add_argument("--producer-linger-ms", type=int, default=5)
    parser.add_argument(
        "--server-root",
        default=None,
        help="run `python -m query_api` from this directory (a copy of query_api/ and "
        "schemas/ to compare against; infra/ still comes from this checkout)",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=["direct", "gateway"],
        default=["direct"],
        help="each level once per path, in turn: straight to the query API, or through "
        "the nginx gateway (infra/gateway.py's config, one query instance behind it)",
    )
    parser.add_argument(
        "--clients-per-request",
        type=int,
        default=1,
        help="SSE clients watching each request (1: every client its own)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        nargs="+",
        default=[1],
        help="query API processes, one run each in turn (e.g. 1 2 1 2); with several, each "
        "reads its share of the partitions and the streams go through the gateway",
    )
    args = parser.parse_args()
    check_chunk_v1()
    os.environ.setdefault("CHATLOG_TEST_KEEP", "1")
    with provide_services() as services, isolated_settings(services, "bench_query_api") as s:
        with pg_connect(s, autocommit=True) as conn:
            key = create_key(conn, "bench")
        kafka_pid = broker_pid(services.home)
        env = {
            **os.environ,
            "CHATLOG_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "CHATLOG_TOPIC_PREFIX": s.topic_prefix,
            "CHATLOG_POSTGRES_URL": s.postgres_url,
            "CHATLOG_MEILI_URL": s.meili_url or "",
            "CHATLOG_INDEX_PREFIX": s.index_prefix,
            "CHATLOG_QUERY_POOL_SIZE": "10",
            "CHATLOG_CLIENT_QUEUE_SIZE": "1024",
        }
        for instances in args.instances:
            # several processes share chat.completions (query_api.hub_share): only the
            # gateway routes each stream to the one that reads its partition
            paths = args.paths if instances == 1 else ["gateway"]
            servers = start_servers(env, instances, args.server_root)
            ports = [port for _, port in servers]
            gateway = None
            try:
                if "gateway" in paths:
                    gateway = start_gateway(ports)
                for n in args.clients:
                    for path in paths:
                        result = run_once(
                            s,
                            ports,
                            [proc.pid for proc, _ in servers],
                            key,
                            n,
                            args.seconds,
                            args.client_procs,
                            args.clients_per_request,
                            args.producer_procs,
                            args.producer_linger_ms,
                            kafka_pid,
                            args.warmup,
                            client_port=gateway[1] if gateway and path == "gateway" else None,
                            gateway_pid=gateway[0].pid if gateway and path == "gateway" else None,
                        )
                        row = {"instances": instances, "path": path, **result}
                        print(
                            json.dumps(
                                {
                                    k: round(v, 2) if isinstance(v, float) else v
                                    for k, v in row.items()
                                }
                            ),
                            flush=True,
                        )
            finally:
                for proc, _ in servers:
                    proc.terminate()
                for proc, _ in servers:
                    proc.wait(10)
                if gateway is not None:
                    gateway[0].terminate()
                    gateway[0].wait(10)


def start_servers(
    env: dict[str, str], instances: int, root: str | None
) -> list[tuple[subprocess.Popen[bytes], int]]:
    """`instances` query API processes (instance i of them each), ready; (process, port)."""
    servers = []
    for i in range(instances):
        port = free_port()
        share = {"CHATLOG_QUERY_INSTANCE": str(i), "CHATLOG_QUERY_INSTANCES": str(instances)}
        server = subprocess.Popen(
            [sys.executable, "-m", "query_api"],
            env={**env, **share, "CHATLOG_QUERY_PORT": str(port)},
            cwd=root or None,
        )
        servers.append((server, port))
        if profile := os.environ.get("BENCH_PYSPY"):  # a path: sample the server with py-spy
            spy = ["py-spy", "record", "-o", f"{profile}.{i}", "-f", "raw", "-d", "25"]
            subprocess.Popen(
                [*spy, "-p", str(server.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    for server, port in servers:
        wait_ready(f"http://127.0.0.1:{port}/readyz", server, "query API")
    return servers


def start_gateway(query_ports: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    """nginx with `chatlog up`'s config in front of the query API processes."""
    from infra import gateway

    port = free_port()
    cfg = gateway.GatewayConfig(
        port=port, command_ports=query_ports, query_ports=query_ports, max_body_bytes=1 << 20
    )
    directory = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    proc = subprocess.Popen(
        gateway.prepare(cfg, directory), stdout=subprocess.DEVNULL, start_new_session=True
    )
    wait_ready(f"http://127.0.0.1:{port}{gateway.HEALTH_PATH}", proc, "the gateway")
    return proc, port


def wait_ready(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 60) -> None:
    """Until `url` answers 2xx; RuntimeError if `proc` exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not become ready") from None
            time.sleep(0.3)


if __name__ == "__main__":
    main()
