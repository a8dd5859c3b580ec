"""Benchmark: accepted prompts/s and accept latency of the command API vs a bare endpoint.

Runs, in one invocation, (1) a bare FastAPI endpoint that parses the same JSON body and
answers 202, and (2) the real command API (`python -m command_api`, one uvicorn process)
on the shared test stack (Kafka 29092, Postgres 25432 unless CHATLOG_BENCH_* say
otherwise), each under the same closed-loop load: CONCURRENCY keep-alive connections, each
sending the next prompt when the previous answer arrived, for DURATION seconds after a
warm-up. 64 users (one per connection) so the per-user lock is not the bottleneck; a
per-user rate limit high enough not to refuse, still counted for every prompt; the
concurrency cap is off (nothing completes: no inference runs in this benchmark).

    .venv/bin/python bench/command_api.py --duration 25 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from infra.auth import create_key
from infra.clients import pg_connect
from infra.harness import Services, isolated_settings
from infra.settings import LOCAL_MEILI_KEY

ROOT = Path(__file__).resolve().parent.parent
BARE_APP = """
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
import json, uuid
app = FastAPI()
@app.post("/v1/chat/completions")
async def accept(request: Request):
    body = json.loads(await request.body())
    return JSONResponse({"id": uuid.uuid4().hex, "model": body["model"]}, status_code=202)
@app.get("/healthz")
async def healthz():
    return {"status": "ok"}
"""

# The command API under cProfile; SIGUSR1 writes the profile (uvicorn re-raises SIGTERM).
PROFILED = """
import cProfile, signal
from command_api.__main__ import main
profile = cProfile.Profile()
signal.signal(signal.SIGUSR1, lambda *_: (profile.disable(), profile.dump_stats({path!r})))
profile.enable()
main()
"""


async def one_connection(
    port: int,
    key: str,
    stop_at: float,
    record_from: float,
    latencies: list[float],
    statuses: dict[int, int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while time.perf_counter() < stop_at:
            n += 1
            body = json.dumps(
                {
                    "model": "SmolLM2-135M-Instruct",
                    "messages": [{"role": "user", "content": f"benchmark prompt {n}"}],
                    "max_tokens": 16,
                }
            ).encode()
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            done = time.perf_counter()
            if started >= record_from:
                status = int(status_line.split()[1])
                statuses[status] = statuses.get(status, 0) + 1
                if status == 202:
                    latencies.append(done - started)
    finally:
        writer.close()


async def load(port: int, keys: list[str], duration: float, warmup: float) -> dict[str, float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    record_from, stop_at = start + warmup, start + warmup + duration
    await asyncio.gather(
        *(one_connection(port, k, stop_at, record_from, latencies, statuses) for k in keys)
    )
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "accepted_per_s": len(latencies) / duration,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "statuses": statuses,  # type: ignore[dict-item]
    }


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.2)


def serve(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, env=env, cwd=ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
    except Exception:
        proc.kill()
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=25.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--port", type=int, default=18500)
    p.add_argument("--profile", help="write a cProfile of the command API process here")
    a = p.parse_args()
    services = Services(
        kafka_bootstrap=os.environ.get("CHATLOG_BENCH_KAFKA", "127.0.0.1:29092"),
        postgres_url=os.environ.get(
            "CHATLOG_BENCH_POSTGRES", "postgresql://chatlog@127.0.0.1:25432/chatlog"
        ),
        meili_url=os.environ.get("CHATLOG_BENCH_MEILI", "http://127.0.0.1:27700"),
        meili_key=LOCAL_MEILI_KEY,
        home=ROOT / ".chatlog" / "test",
        source="local",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results: dict[str, dict[str, float]] = {}
    bare = ROOT / ".chatlog" / "bench_bare_app.py"
    bare.write_text(BARE_APP)
    proc = serve(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(bare.parent),
            "bench_bare_app:app",
            "--port",
            str(a.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env,
        a.port,
    )
    try:
        results["bare FastAPI endpoint"] = asyncio.run(
            load(a.port, ["x"] * a.concurrency, a.duration, a.warmup)
        )
    finally:
        stop(proc)
    with isolated_settings(services, f"bench_command_{uuid.uuid4().hex[:4]}") as infra:
        with pg_connect(infra) as conn:
            from infra.auth import apply_auth_ddl

            apply_auth_ddl(conn)
            keys = [create_key(conn, f"bench-{i}") for i in range(a.concurrency)]
        cmd_env = {
            **env,
            "CHATLOG_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
            "CHATLOG_TOPIC_PREFIX": infra.topic_prefix,
            "CHATLOG_POSTGRES_URL": infra.postgres_url,
            "CHATLOG_COMMAND_PORT": str(a.port + 1),
            "CHATLOG_RATE_LIMIT_PER_MIN": "1000000",
            "CHATLOG_MAX_CONCURRENT_GENERATIONS": "0",
        }
        args = ["-c", PROFILED.format(path=a.profile)] if a.profile else ["-m", "command_api"]
        proc = serve([sys.executable, *args], cmd_env, a.port + 1)
        try:
            results["command API (202 after Kafka ack)"] = asyncio.run(
                load(a.port + 1, keys, a.duration, a.warmup)
            )
        finally:
            if a.profile:
                proc.send_signal(signal.SIGUSR1)
                time.sleep(2)
            stop(proc)
    bare_rate = results["bare FastAPI endpoint"]["accepted_per_s"]
    print(f"concurrency {a.concurrency}, {a.duration:g} s measured after {a.warmup:g} s warm-up")
    print("| target | accepted/s | p50 ms | p99 ms | statuses | vs bare |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['accepted_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['statuses']} | {r['accepted_per_s'] / bare_rate:.0%} |"
        )


if __name__ == "__main__":
    main()
