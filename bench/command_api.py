"""Benchmark: accepted prompts/s and accept latency of the command API vs a bare endpoint.

Runs, in one invocation, (1) a bare FastAPI endpoint that parses the same JSON body and
answers 202, and (2) the real command API (`python -m command_api`, one uvicorn process)
on the shared test stack (Kafka 29092, Postgres 25432 unless CHATLOG_BENCH_* say
otherwise), each under the same closed-loop load: CONCURRENCY keep-alive connections, each
sending the next prompt when the previous answer arrived, for DURATION seconds after a
warm-up. Default limits (60 prompts/min, 8 running generations per user: nothing
completes, no inference runs here), so prompts cycle over many users (--users, 32,768) to
stay under them: every prompt still pays for both checks. Prompts ask for the 202 at once
(`Prefer: respond-async`). `--baseline-root DIR` adds a third target, the `command_api`
package in DIR (e.g. a copy of the previous version), in the same slices, on its own
database and topics (each server installs its own SQL functions at start); `--baseline-env`
sets knobs for it only (A/B). CPU ms per request of the server, the Postgres backends of
its database, Kafka and the load generator are reported; `--pyspy FILE` records the server
with py-spy. Take the benchmark lock (the cores are shared):

    flock /tmp/chatlog-bench.lock env CHATLOG_TEST_KEEP=1 .venv/bin/python bench/command_api.py \
        --duration 20 --rounds 4 --concurrency 64 --baseline-root /tmp/cmdbase
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from infra.auth import KEY_PREFIX, apply_auth_ddl, hash_key
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
import cProfile, signal, time
from command_api.__main__ import main
profile = cProfile.Profile(time.process_time)
signal.signal(signal.SIGUSR1, lambda *_: (profile.disable(), profile.dump_stats({path!r})))
profile.enable()
main()
"""


async def one_connection(
    port: int,
    keys: Iterator[str],
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
            key = next(keys)
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
                f"Prefer: respond-async\r\n"
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


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of `pid`."""
    out = []
    for d in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(d.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def processes(match: str) -> list[int]:
    """Pids whose command line contains `match` (and their children)."""
    found: list[int] = []
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[int(d.name)] = ppid
        if match in cmd:
            found.append(int(d.name))
    return found + [pid for pid, ppid in parents.items() if ppid in found]


def cpu_groups(server: int, data_dir: str, database: str) -> dict[str, list[int]]:
    """Who burns CPU per request: the server, Postgres (the backends serving the bench's own
    database: the shared server also runs the other engineers' work), the broker."""
    return {
        "server": [server, *children(server)],  # uvicorn workers, if several
        "postgres": processes(f" {database} "),  # backend titles: "postgres: USER DB HOST"
        "kafka": processes(f"{data_dir}/kafka/server.properties"),
        "loadgen": [os.getpid()],
    }


async def load(
    port: int,
    users: Iterator[str],
    concurrency: int,
    duration: float,
    warmup: float,
    groups: Callable[[], dict[str, list[int]]] | None = None,
) -> dict[str, float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    record_from, stop_at = start + warmup, start + warmup + duration
    cpu: dict[str, float] = {}

    async def account() -> None:  # CPU seconds per group over the measured window
        await asyncio.sleep(max(0.0, record_from - time.perf_counter()))
        pids = groups() if groups else {}  # after the warm-up: the pool has grown by then
        before = {g: cpu_s(p) for g, p in pids.items()}
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        cpu.update({g: cpu_s(p) - before[g] for g, p in pids.items()})

    await asyncio.gather(
        account(),
        *(
            one_connection(port, users, stop_at, record_from, latencies, statuses)
            for _ in range(concurrency)
        ),
    )
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "accepted_per_s": len(latencies) / duration,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "statuses": statuses,  # type: ignore[dict-item]
        # CPU milliseconds per accepted request, by process group
        **{f"cpu_{g}": 1000 * c / max(1, len(latencies)) for g, c in cpu.items()},
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


def serve_in(root: str, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """`python -m command_api` from another checkout of the package (cwd wins on sys.path)."""
    return serve([sys.executable, "-m", "command_api"], env, port, cwd=Path(root))


def serve(
    args: list[str], env: dict[str, str], port: int, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, env=env, cwd=cwd)
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
    p.add_argument("--duration", type=float, default=24.0, help="measured seconds per target")
    p.add_argument("--rounds", type=int, default=4, help="alternations (both targets each)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--users", type=int, default=32768, help="prompts cycle over this many users")
    p.add_argument("--port", type=int, default=18500)
    p.add_argument(
        "--baseline-root",
        help="also serve the command_api package found in this directory (e.g. a copy of "
        "the previous version) as a third target, alternating with the other two",
    )
    p.add_argument(
        "--baseline-env",
        nargs="*",
        default=[],
        help="NAME=VALUE settings for the baseline server only (A/B of a knob)",
    )
    p.add_argument("--profile", help="write a cProfile of the command API process here")
    p.add_argument(
        "--pyspy", help="write a py-spy profile (raw, collapsed stacks) of the command API here"
    )
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
    bare = ROOT / ".chatlog" / "bench_bare_app.py"
    bare.write_text(BARE_APP)
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        infra = stack.enter_context(
            isolated_settings(services, f"bench_command_{uuid.uuid4().hex[:4]}")
        )
        keys = [KEY_PREFIX + secrets.token_urlsafe(32) for _ in range(a.users)]
        # The baseline gets its own database and topics (same users and keys): it applies
        # its own DDL at start, which must not replace the functions the other target runs.
        base_infra = infra
        if a.baseline_root:
            base_infra = stack.enter_context(
                isolated_settings(services, f"bench_command_base_{uuid.uuid4().hex[:4]}")
            )
        for target in {infra.postgres_url: infra, base_infra.postgres_url: base_infra}.values():
            with pg_connect(target) as conn, conn.transaction():
                apply_auth_ddl(conn)
                conn.cursor().executemany(
                    "INSERT INTO command.api_keys (key_hash, user_id, hint) VALUES (%s, %s, %s)",
                    [(hash_key(k), f"bench-{i}", k[:7]) for i, k in enumerate(keys)],
                )
        cmd_env = {
            **env,
            "CHATLOG_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
            "CHATLOG_TOPIC_PREFIX": infra.topic_prefix,
            "CHATLOG_POSTGRES_URL": infra.postgres_url,
            "CHATLOG_COMMAND_PORT": str(a.port + 1),
        }
        try:
            procs.append(
                serve(
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
                        "--loop",
                        "uvloop",
                        "--http",
                        "httptools",
                    ],
                    env,
                    a.port,
                )
            )
            args = ["-c", PROFILED.format(path=a.profile)] if a.profile else ["-m", "command_api"]
            procs.append(serve([sys.executable, *args], cmd_env, a.port + 1))
            if a.baseline_root:  # cwd first on sys.path: its command_api shadows ours
                base_env = {
                    **cmd_env,
                    "CHATLOG_TOPIC_PREFIX": base_infra.topic_prefix,
                    "CHATLOG_POSTGRES_URL": base_infra.postgres_url,
                    "CHATLOG_COMMAND_PORT": str(a.port + 2),
                }
                base_env.update(kv.split("=", 1) for kv in a.baseline_env)
                procs.append(serve_in(a.baseline_root, base_env, a.port + 2))
            if a.pyspy:
                spy = subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                     str(procs[1].pid), "--format", "raw", "--rate", "250",
                     "--output", a.pyspy, "--nonblocking"],
                    stdout=subprocess.DEVNULL,
                )  # fmt: skip
            data = str(services.home / "data")
            databases = [i.postgres_url.rsplit("/", 1)[1] for i in (infra, infra, base_infra)]
            a.cpu = [
                functools.partial(cpu_groups, proc.pid, data, db)
                for proc, db in zip(procs, databases, strict=False)
            ]  # [bare, command, baseline]
            rounds = asyncio.run(run_rounds(a, keys))
        finally:
            if a.pyspy:
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                spy.wait(30)
            if a.profile:
                procs[1].send_signal(signal.SIGUSR1)
                time.sleep(2)
            for proc in procs:
                stop(proc)
    report(a, rounds)


async def run_rounds(a: argparse.Namespace, keys: list[str]) -> list[dict[str, dict[str, float]]]:
    """Alternate the two targets in short slices, so both see the same machine load."""
    slice_s = a.duration / a.rounds
    rounds = []
    users = itertools.cycle(keys)  # shared by all slices: each prompt goes to the next user
    for _ in range(a.rounds):
        r = {
            "bare": await load(
                a.port, itertools.repeat("x"), a.concurrency, slice_s, a.warmup, a.cpu[0]
            )
        }
        r["command"] = await load(a.port + 1, users, a.concurrency, slice_s, a.warmup, a.cpu[1])
        if a.baseline_root:
            r["baseline"] = await load(
                a.port + 2, users, a.concurrency, slice_s, a.warmup, a.cpu[2]
            )
        rounds.append(r)
    return rounds


def report(a: argparse.Namespace, rounds: list[dict[str, dict[str, float]]]) -> None:
    print(
        f"concurrency {a.concurrency}; {a.rounds} alternating rounds of "
        f"{a.duration / a.rounds:g} s per target (+{a.warmup:g} s warm-up each)"
    )
    print(
        "| round | bare req/s | bare p50/p99 ms | command accepted/s | command p50/p99 ms | ratio |"
    )
    print("|---|---|---|---|---|---|")
    ratios = []
    for i, r in enumerate(rounds, 1):
        b, c = r["bare"], r["command"]
        ratios.append(c["accepted_per_s"] / b["accepted_per_s"])
        print(
            f"| {i} | {b['accepted_per_s']:.0f} | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} "
            f"| {c['accepted_per_s']:.0f} | {c['p50_ms']:.1f} / {c['p99_ms']:.1f} "
            f"| {ratios[-1]:.0%} |"
        )
    statuses: dict[int, int] = {}
    for r in rounds:
        for code, n in r["command"]["statuses"].items():  # type: ignore[attr-defined]
            statuses[code] = statuses.get(code, 0) + n
    print(f"median ratio {statistics.median(ratios):.0%}; command API statuses {statuses}")
    if a.baseline_root:
        print(f"baseline ({a.baseline_root} {' '.join(a.baseline_env)}), same slices:")
        base = []
        for i, r in enumerate(rounds, 1):
            b, c = r["bare"], r["baseline"]
            base.append(c["accepted_per_s"] / b["accepted_per_s"])
            print(
                f"| {i} | {b['accepted_per_s']:.0f} | {c['accepted_per_s']:.0f} "
                f"| {c['p50_ms']:.1f} / {c['p99_ms']:.1f} | {base[-1]:.0%} "
                f"| command/baseline {r['command']['accepted_per_s'] / c['accepted_per_s']:.2f} |"
            )
        print(f"baseline median ratio {statistics.median(base):.0%}")
    groups = [k[4:] for k in rounds[0]["command"] if k.startswith("cpu_")]
    print("CPU ms per request (median over rounds):")
    for target in rounds[0]:
        per = {g: statistics.median(r[target][f"cpu_{g}"] for r in rounds) for g in groups}
        print(f"  {target}: " + ", ".join(f"{g} {v:.2f}" for g, v in per.items()))


if __name__ == "__main__":
    main()
