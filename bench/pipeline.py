"""The pipeline benchmark: time to first token as a client sees it vs the engine's own.

Runs the whole system (four services as processes and the nginx gateway in front, as
`chatlog up` runs them; scripted engine at a fixed token rate; real Kafka / Postgres /
Meilisearch from the test harness) and drives it over HTTP:

1. Gateway cost: plain reads (`GET /v1/models`, `GET /v1/chat/completions/{id}`), one at
   a time, alternately through the gateway and straight to the query API.
2. Open loop at a fixed prompt rate, prompts alternately through the gateway (the front
   door) and straight to the command API, in one run: client TTFT (POST `stream: true` ->
   first content chunk) and, per request, the engine's own TTFT (`ttft_ms`: prompt
   consumed by the replica -> first token), so overhead = client TTFT - engine TTFT; and
   each request's hops from the events' timestamps (`bench/hops.py`).
3. Closed loop through the gateway at rising concurrency until p99 client TTFT passes
   500 ms: prompts/s, chunk events/s, TTFT percentiles.

    flock /tmp/chatlog-bench.lock env CHATLOG_TEST_KEEP=1 .venv/bin/python bench/pipeline.py \
        --rate 10 --duration 20 --levels 10 25 50 100 150 200 --png docs/pipeline_ttft.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from infra.auth import apply_auth_ddl, create_key
from infra.clients import pg_connect
from infra.harness import isolated_settings, provide_services
from infra.local.procs import read_pid, session_members
from infra.system import System

try:
    from bench.hops import HopRecorder, Marks, hop_table
except ImportError:  # run as a script: bench/ is on sys.path, the repo root too (-m or not)
    from hops import HopRecorder, Marks, hop_table  # type: ignore[no-redef]

MODEL = "chatlog-scripted"


@dataclass
class Sample:
    request_id: str
    client_ttft_ms: float
    total_ms: float
    chunks: int
    engine_ttft_ms: float | None = None
    path: str = "gateway"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def one_prompt(
    client: httpx.AsyncClient,
    prompt: str,
    max_tokens: int,
    hops: HopRecorder | None = None,
    query: httpx.AsyncClient | None = None,
) -> Sample:
    """One `stream: true` prompt; with `hops`, its marks (and, with `query`, a second
    reader of the same request straight from the query API, for the relay's hop)."""
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    sent, started = time.time(), time.perf_counter()
    first: float | None = None
    chunks, request_id = 0, ""
    watcher: asyncio.Task[None] | None = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code}: {(await resp.aread())[:300]!r}")
        request_id = resp.headers.get("x-request-id", "")
        marks = hops.mark(request_id) if hops is not None and request_id else None
        if marks is not None:
            marks.sent = sent
            if query is not None:
                watcher = asyncio.create_task(first_direct_frame(query, request_id, marks))
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            request_id = obj.get("id", request_id)
            choices = obj.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
                    if marks is not None:
                        marks.client_first = time.time()
    end = time.perf_counter()
    if watcher is not None:
        await watcher
    if first is None:
        raise RuntimeError(f"{request_id}: no content")
    return Sample(request_id, (first - started) * 1000, (end - started) * 1000, chunks)


async def first_direct_frame(query: httpx.AsyncClient, request_id: str, marks: Marks) -> None:
    """When the query API itself serves the request's first chunk (read, then dropped)."""
    url = f"/v1/chat/completions/{request_id}/stream"
    async with query.stream("GET", url) as resp:
        async for line in resp.aiter_lines():
            if line == "event: chunk":
                marks.direct_first = time.time()
                return


async def fill_engine_ttft(query: httpx.AsyncClient, samples: list[Sample]) -> None:
    """The engine's own TTFT of each request, once the projection has recorded it."""

    async def fill(s: Sample) -> None:
        for _ in range(100):
            resp = await query.get(f"/v1/chat/completions/{s.request_id}")
            ttft = (
                resp.json().get("timings", {}).get("ttft_ms") if resp.status_code == 200 else None
            )
            if ttft is not None:
                s.engine_ttft_ms = float(ttft)
                return
            await asyncio.sleep(0.1)

    sem = asyncio.Semaphore(32)

    async def bounded(s: Sample) -> None:
        async with sem:
            await fill(s)

    await asyncio.gather(*(bounded(s) for s in samples))


async def open_loop(
    paths: dict[str, httpx.AsyncClient],
    rate: float,
    duration: float,
    tokens: int,
    hops: HopRecorder,
    query: httpx.AsyncClient,
) -> list[Sample]:
    """Prompts at `rate`/s, taking the paths in turn (so each sees the same load)."""
    tasks, start = [], time.perf_counter()
    names = list(paths)

    async def prompt(i: int, path: str) -> Sample:
        s = await one_prompt(paths[path], f"open loop {i} say something", tokens, hops, query)
        s.path = path
        return s

    for i in range(int(rate * duration)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(prompt(i, names[i % len(names)])))
    return list(await asyncio.gather(*tasks))


async def read_latency(
    paths: dict[str, httpx.AsyncClient], request_id: str, rounds: int
) -> dict[str, dict[str, float]]:
    """Plain reads one at a time, alternating paths: the gateway's own cost per request."""
    urls = {"models": "/v1/models", "completion": f"/v1/chat/completions/{request_id}"}
    times: dict[str, list[float]] = {f"{u} {p}": [] for u in urls for p in paths}
    for _ in range(rounds):
        for u, url in urls.items():
            for p, client in paths.items():
                t = time.perf_counter()
                resp = await client.get(url)
                times[f"{u} {p}"].append((time.perf_counter() - t) * 1000)
                assert resp.status_code == 200, resp.text
    return {
        k: {"p50": pct(v, 50), "p99": pct(v, 99), "mean": statistics.fmean(v)}
        for k, v in times.items()
    }


async def closed_loop(
    client: httpx.AsyncClient, concurrency: int, duration: float, tokens: int
) -> tuple[list[Sample], float]:
    deadline = time.perf_counter() + duration
    samples: list[Sample] = []

    async def worker(w: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            samples.append(await one_prompt(client, f"worker {w} prompt {i}", tokens))
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return samples, time.perf_counter() - started


def cpu_by_service(system: System) -> dict[str, float]:
    """CPU seconds (user + system) so far of each service's whole session (Ray's
    processes count for inference, nginx's workers for the gateway)."""
    out: dict[str, float] = {}
    for c in system.services():
        pid = read_pid(system.pidfile(c))
        total = 0.0
        for member in session_members(pid) if pid else []:
            try:
                fields = Path(f"/proc/{member}/stat").read_text().rsplit(") ", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out[c.name] = total
    return out


def profile(system: System, directory: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy (collapsed stacks) on the two APIs and the processors for `seconds`."""
    directory.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in ("command_api", "query_api", "processors"):
        pid = read_pid(system.pidfile(system.service(name)))
        out = directory / f"{name}.txt"
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        cmd = [spy, "record", "-f", "raw", "-r", "200", "-d", str(int(seconds))]
        procs.append(
            subprocess.Popen(
                [*cmd, "-o", str(out), "-p", str(pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def summary(samples: list[Sample]) -> dict[str, float]:
    client = [s.client_ttft_ms for s in samples]
    engine = [s.engine_ttft_ms for s in samples if s.engine_ttft_ms is not None]
    overhead = [
        s.client_ttft_ms - s.engine_ttft_ms for s in samples if s.engine_ttft_ms is not None
    ]
    return {
        "n": len(samples),
        "client_p50": pct(client, 50),
        "client_p99": pct(client, 99),
        "engine_p50": pct(engine, 50),
        "engine_p99": pct(engine, 99),
        "overhead_p50": pct(overhead, 50),
        "overhead_p99": pct(overhead, 99),
        "overhead_mean": statistics.fmean(overhead) if overhead else float("nan"),
        # content frames per prompt: one per TokenChunk event of its answer
        "chunks_per_prompt": statistics.fmean(s.chunks for s in samples) if samples else 0.0,
    }


async def run(args: argparse.Namespace, system: System, key: str) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)

    def client(url: str, timeout: float = 120) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits)

    hops = HopRecorder(system.settings)
    hops.start()
    front = system.base_url.removesuffix("/v1")
    async with (
        client(front) as gateway,
        client(system.command_url) as direct,
        client(system.query_url, 30) as query,
        client(front, 30) as gateway_query,
    ):
        for c in (gateway, direct):  # warm-up: connections, caches and consumers
            for _ in range(3):
                warm = await one_prompt(c, "warm up", args.tokens)
        results: dict = {"gateway_reads": {}, "open_loop": {}, "levels": []}
        reads = {"gateway": gateway_query, "direct": query}
        results["gateway_reads"] = await read_latency(reads, warm.request_id, args.read_rounds)
        print(json.dumps(results["gateway_reads"], indent=1), flush=True)
        paths = {"gateway": gateway, "direct": direct} if args.compare else {"gateway": gateway}
        if args.idle > 0:  # what each service burns with no prompt at all (its loops)
            idle_before = cpu_by_service(system)
            await asyncio.sleep(args.idle)
            results["idle_cpu_ms_per_s"] = {
                name: (cpu - idle_before.get(name, 0.0)) * 1000 / args.idle
                for name, cpu in cpu_by_service(system).items()
            }
            print(json.dumps(results["idle_cpu_ms_per_s"]), flush=True)
        spies = profile(system, args.profile, args.duration) if args.profile else []
        cpu_before = cpu_by_service(system)
        samples = await open_loop(paths, args.rate, args.duration, args.tokens, hops, query)
        cpu_after = cpu_by_service(system)
        for spy in spies:
            spy.wait(60)
        results["cpu_ms_per_prompt"] = {
            name: (cpu_after[name] - cpu_before.get(name, 0.0)) * 1000 / len(samples)
            for name in cpu_after
        }
        print(json.dumps(results["cpu_ms_per_prompt"]), flush=True)
        await fill_engine_ttft(query, samples)
        for path in paths:
            mine = [s for s in samples if s.path == path]
            marks = [hops.marks[s.request_id] for s in mine if s.request_id in hops.marks]
            results["open_loop"][path] = {
                "rate": args.rate,
                **summary(mine),
                "hops": hop_table(marks),
            }
        print(json.dumps(results["open_loop"], indent=1), flush=True)
        hops.stop()
        for level in args.levels:
            samples, elapsed = await closed_loop(gateway, level, args.duration, args.tokens)
            await fill_engine_ttft(query, samples)
            row = {
                "concurrency": level,
                "prompts_per_s": len(samples) / elapsed,
                "chunk_events_per_s": sum(s.chunks for s in samples) / elapsed,
                **summary(samples),
            }
            results["levels"].append(row)
            print(json.dumps(row), flush=True)
            if row["client_p99"] > 500:
                break
        return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["levels"]
    x = [r["concurrency"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in [
        ("client_p50", "client TTFT p50"),
        ("client_p99", "client TTFT p99"),
        ("engine_p50", "engine TTFT p50"),
        ("overhead_p50", "pipeline overhead p50"),
    ]:
        ax.plot(x, [r[key] for r in rows], marker="o", label=label)
    ax.axhline(500, color="grey", linestyle="--", linewidth=0.8, label="500 ms")
    ax.set_xlabel("concurrent generations (closed loop)")
    ax.set_ylabel("ms")
    ax.set_title("chatlog: time to first token vs load (scripted engine, 2 cores)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=10.0, help="open-loop prompts per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument(
        "--levels",
        type=int,
        nargs="*",
        default=[10, 25, 50, 100, 150, 200],
        help="closed-loop concurrencies (none: the open loop only)",
    )
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per prompt")
    parser.add_argument(
        "--token-rate", type=float, default=20.0, help="scripted tokens/s per sequence"
    )
    parser.add_argument(
        "--read-rounds", type=int, default=300, help="reads per path and URL (gateway cost)"
    )
    parser.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="open loop through the gateway only (default: alternate with direct)",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the APIs in the open loop, into DIR"
    )
    parser.add_argument(
        "--idle", type=float, default=0.0, help="seconds of no load to measure idle CPU"
    )
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with provide_services() as services, isolated_settings(services, "bench_pipeline") as infra:
        settings = infra.model_copy(update={"models": MODEL, "meili_url": infra.meili_url})
        with pg_connect(settings) as conn:
            apply_auth_ddl(conn)
            key = create_key(conn, f"bench-{uuid.uuid4().hex[:6]}")
        run_dir = Path(tempfile.mkdtemp(prefix="chatlog-bench-"))
        system = System(
            settings,
            command_port=18100,
            query_port=18101,
            serve_port=18102,
            gateway_port=18103,
            run_dir=run_dir,
            extra_env={
                "CHATLOG_ENGINE": "scripted",
                "CHATLOG_SCRIPTED_TOKEN_RATE": str(args.token_rate),
                "CHATLOG_SCRIPTED_REPLY_REPEAT": "20",
                "CHATLOG_MAX_BATCH": "512",
                "CHATLOG_MAX_WAITING": "512",
                "CHATLOG_RATE_LIMIT_PER_MIN": "0",
                "CHATLOG_MAX_CONCURRENT_GENERATIONS": "0",
            },
        )
        try:
            system.start_all()
            results = asyncio.run(run(args, system, key))
        finally:
            system.stop_all()
            print(f"logs: {run_dir}/logs")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
