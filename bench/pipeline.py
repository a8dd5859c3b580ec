"""The pipeline benchmark: time to first token as a client sees it vs the engine's own.

Runs the whole system (four services as processes, scripted engine at a fixed token rate,
real Kafka / Postgres / Meilisearch from the test harness) and drives it over HTTP:

1. Open loop at a fixed prompt rate: client TTFT (POST `stream: true` -> first content
   chunk) and, per request, the engine's own TTFT (`ttft_ms`: prompt consumed by the
   replica -> first token), so overhead = client TTFT - engine TTFT, measured side by side.
2. Closed loop at rising concurrency until p99 client TTFT passes 500 ms: prompts/s,
   chunk events/s, TTFT percentiles.

    CHATLOG_TEST_KEEP=1 .venv/bin/python bench/pipeline.py --rate 10 --duration 20 \
        --levels 10 25 50 100 150 200 --png docs/pipeline_ttft.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from infra.auth import apply_auth_ddl, create_key
from infra.clients import pg_connect
from infra.harness import isolated_settings, provide_services
from infra.system import System

MODEL = "chatlog-scripted"


@dataclass
class Sample:
    request_id: str
    client_ttft_ms: float
    total_ms: float
    chunks: int
    engine_ttft_ms: float | None = None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def one_prompt(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> Sample:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    started = time.perf_counter()
    first: float | None = None
    chunks, request_id = 0, ""
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code}: {(await resp.aread())[:300]!r}")
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
    end = time.perf_counter()
    if first is None:
        raise RuntimeError(f"{request_id}: no content")
    return Sample(request_id, (first - started) * 1000, (end - started) * 1000, chunks)


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
    client: httpx.AsyncClient, rate: float, duration: float, tokens: int
) -> list[Sample]:
    tasks, start = [], time.perf_counter()
    n = int(rate * duration)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(
            asyncio.create_task(one_prompt(client, f"open loop {i} say something", tokens))
        )
    return list(await asyncio.gather(*tasks))


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
    }


async def run(args: argparse.Namespace, system: System, key: str) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with (
        httpx.AsyncClient(
            base_url=system.command_url, headers=headers, timeout=120, limits=limits
        ) as cmd,
        httpx.AsyncClient(base_url=system.query_url, headers=headers, timeout=30) as query,
    ):
        for _ in range(3):  # warm-up: connections, JIT-free but caches and consumers
            await one_prompt(cmd, "warm up", args.tokens)
        results: dict = {"open_loop": {}, "levels": []}
        samples = await open_loop(cmd, args.rate, args.duration, args.tokens)
        await fill_engine_ttft(query, samples)
        results["open_loop"] = {"rate": args.rate, **summary(samples)}
        print(json.dumps(results["open_loop"], indent=1), flush=True)
        for level in args.levels:
            samples, elapsed = await closed_loop(cmd, level, args.duration, args.tokens)
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
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 25, 50, 100, 150, 200])
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per prompt")
    parser.add_argument(
        "--token-rate", type=float, default=20.0, help="scripted tokens/s per sequence"
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
