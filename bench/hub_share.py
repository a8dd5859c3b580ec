"""Benchmark: the hub's read of chat.completions, one query process against two sharing it.

    flock /tmp/chatlog-bench.lock env CHATLOG_TEST_KEEP=1 .venv/bin/python -m bench.hub_share \
        --rate 20000 --seconds 15 --rounds 2

docs/capacity.md found the read side's first ceiling here: every query process's hub read
every partition of chat.completions, so adding processes added no read capacity. With
shares (`query_api.hub_share`), instance i of N reads the partitions p with p mod N = i.
This bench produces TokenChunk records at `--rate` per second spread over every partition
(many conversations, no subscriber: the read is the cost that did not divide), to one
query process and then to two, alternating `--rounds` times on one box, and reports for
each process the records its hub read per second (its own counter) and its CPU per second
over the window, its idle CPU (measured before the load) and the CPU per record produced.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from typing import Any

from confluent_kafka import Producer

from bench.query_api import (
    CHUNK_HEADERS,
    check_chunk_v1,
    chunk_v1,
    cpu_seconds,
    free_port,
    wait_ready,
)
from infra.clients import producer_config
from infra.harness import isolated_settings, provide_services
from infra.settings import InfraSettings
from infra.system import settings_env

CONVERSATIONS = 4096  # keys: enough that every partition gets its even share


def start_query(settings: InfraSettings, instance: int, instances: int) -> tuple[Any, int]:
    port = free_port()
    env = {
        **os.environ,
        **settings_env(settings),
        "CHATLOG_QUERY_PORT": str(port),
        "CHATLOG_QUERY_INSTANCE": str(instance),
        "CHATLOG_QUERY_INSTANCES": str(instances),
    }
    proc = subprocess.Popen([sys.executable, "-m", "query_api"], env=env)
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc, "query API")
    return proc, port


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    if not found:
        raise RuntimeError(f"no {name} in /metrics")
    return float(found.group(1))


def produce_load(settings: InfraSettings, rate: float, seconds: float) -> tuple[int, float]:
    """`rate` chunk records per second for `seconds`, in 10 ms slices; (records, lateness
    of the slowest slice in seconds)."""
    producer = Producer({**producer_config(settings), "linger.ms": 5})
    topic = settings.topics.completions
    per_slice, slices = max(1, round(rate / 100)), int(seconds * 100)
    start, sent, behind = time.time(), 0, 0.0
    for n in range(slices):
        delay = start + n / 100 - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            behind = max(behind, -delay)
        now_ms = int(time.time() * 1000)
        for _ in range(per_slice):
            cid = f"share-{sent % CONVERSATIONS}"
            value = chunk_v1(f"r-{cid}", cid, sent // CONVERSATIONS, "tok", now_ms)
            while True:
                try:
                    producer.produce(topic, key=cid, value=value, headers=CHUNK_HEADERS)
                    break
                except BufferError:
                    producer.poll(0.01)
            sent += 1
        producer.poll(0)
    producer.flush(30)
    return sent, behind


def run_round(settings: InfraSettings, instances: int, args: argparse.Namespace) -> dict[str, Any]:
    procs = [start_query(settings, i, instances) for i in range(instances)]
    try:
        time.sleep(2.0)  # start-up work settles
        idle0 = [cpu_seconds(p.pid) for p, _ in procs]
        time.sleep(args.idle)
        idle = [
            (cpu_seconds(p.pid) - c) / args.idle for (p, _), c in zip(procs, idle0, strict=True)
        ]
        cpu0 = [cpu_seconds(p.pid) for p, _ in procs]
        read0 = [metric(port, "chatlog_query_hub_records_read") for _, port in procs]
        began = time.monotonic()
        sent, behind = produce_load(settings, args.rate, args.seconds)
        time.sleep(1.0)  # the hubs drain what is in flight
        window = time.monotonic() - began
        out = []
        for i, (p, port) in enumerate(procs):
            cpu = (cpu_seconds(p.pid) - cpu0[i]) / window
            read = metric(port, "chatlog_query_hub_records_read") - read0[i]
            out.append(
                {
                    "instance": i,
                    "partitions": metric(port, "chatlog_query_hub_partitions"),
                    "read_per_s": round(read / window),
                    "cpu_ms_per_s": round(cpu * 1000, 1),
                    "idle_cpu_ms_per_s": round(idle[i] * 1000, 1),
                    "us_per_record_produced": round((cpu - idle[i]) * 1e6 * window / sent, 2),
                }
            )
        return {
            "instances": instances,
            "produced_per_s": round(sent / window),
            "producer_behind_s": round(behind, 3),
            "processes": out,
        }
    finally:
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            p.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=20000.0, help="chunk records per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="load per round")
    parser.add_argument("--idle", type=float, default=3.0, help="idle seconds measured first")
    parser.add_argument("--rounds", type=int, default=2, help="1 then 2 processes, this often")
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    check_chunk_v1()
    os.environ.setdefault("CHATLOG_TEST_KEEP", "1")
    with provide_services() as services, isolated_settings(services, "bench_hub_share") as s:
        for _ in range(args.rounds):
            for n in args.instances:
                print(json.dumps(run_round(s, n, args)), flush=True)


if __name__ == "__main__":
    main()
