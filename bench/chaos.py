"""The chaos run: clients use the system while its parts are killed and restarted; then
check that nothing acknowledged was lost, doubled or garbled.

For `--duration` seconds, `--clients` concurrent clients each loop: submit a prompt
(`Prefer: respond-async`), then stream it to the end, or hang up after a few chunks and
resume with `Last-Event-ID`, or cancel it mid-stream, or delete its conversation (during
or after the stream), or look only after the chaos (a replay from the start), or (with
`--outage`) open the stream ~65 s late. Meanwhile a fault loop, every `--fault-every`
seconds, in turn SIGKILLs the Serve replica (Ray restarts it), SIGKILLs and restarts the
processors, SIGKILLs and restarts the query API, stops and restarts Kafka, and (with
`--outage S`) keeps the processors down for S seconds. Everything runs on a private Kafka /
Postgres / Meilisearch (`tests/e2e/faults.py`), never the shared test stack, with the
scripted engine, so every answer is known. Only 127.0.0.1 traffic; every loop and wait
is bounded.

Then it lets the system settle and checks (`bench/chaos_checks.py`), printing figures:
prompts acknowledged; each with exactly one final event (chat.completions, and
chat.answers when the replica writes it); every fully streamed text equal to the stored
one; no stream left open; the read model's digest equal to a fresh rebuild; zero 5xx.

    CHATLOG_TEST_KEEP=1 .venv/bin/python -m bench.chaos --duration 240 --clients 4 \
        --fault-every 15 --outage 90
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infra.auth import create_key
from infra.clients import pg_connect
from infra.harness import Services, isolated_settings, provide_services
from infra.system import System, component
from tests.e2e.conftest import SCRIPTED_MODEL, running_system
from tests.e2e.faults import private_stack, replica_pids, sigkill_component
from tests.e2e.sse import aevents

STREAM_DEADLINE_S = 150.0  # a stream not ended by done/error by then is "left open"
RECOVER_S = 180.0  # a restarted part must be back within this
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
]
ENV = {  # the services' environment for the run
    "CHATLOG_SCRIPTED_TOKEN_RATE": "60",  # ~2.5 s per answer: faults land mid-stream
    "CHATLOG_RATE_LIMIT_PER_MIN": "0",
    "CHATLOG_MAX_CONCURRENT_GENERATIONS": "0",
}


@dataclass(frozen=True)
class Plan:
    duration_s: float = 240.0
    clients: int = 4
    fault_every_s: float = 15.0
    seed: int = 12
    # > 0: one fault of the cycle keeps the processors down this long, and some clients
    # open their stream only ~65 s after submitting (the hub forgets a finished request
    # after 60 s: such a stream needs the read model, which is behind)
    outage_s: float = 0.0


@dataclass
class Req:
    """An acknowledged prompt (202) and what its client did and saw."""

    id: str
    conversation_id: str
    content: str
    user: int
    mode: str
    streamed: str | None = None  # the text of a stream that ended with `done`
    done: dict[str, Any] | None = None
    stream_error: dict[str, Any] | None = None
    cancel_asked: bool = False
    deleted: bool = False


@dataclass
class Tally:
    """Everything the run counts; `failures` name the request and what was expected."""

    requests: list[Req] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # 429/409/503 answered in shape
    unexpected_5xx: list[str] = field(default_factory=list)
    transport_errors: Counter[str] = field(default_factory=Counter)
    streams: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    recoveries_s: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    fault_errors: list[str] = field(default_factory=list)
    submits_given_up: int = 0

    def note(self, what: str, resp: httpx.Response) -> None:
        """Count a response; a 5xx other than an OpenAI-shaped 503 (a documented, bounded
        refusal while a dependency is down) is a failure of the run."""
        self.statuses[resp.status_code] += 1
        if resp.status_code in (409, 429, 503) and _openai_error(resp):
            self.refusals[f"{resp.status_code} {what}"] += 1
        elif resp.status_code >= 500:
            self.unexpected_5xx.append(f"{what} -> {resp.status_code}: {resp.text[:200]!r}")

    def fault(self, name: str, inject: Callable[[], None]) -> None:
        """Inject one fault and wait for its recovery (`inject` does both), timed; an error
        is reported, not raised: the run goes on and the checks say more."""
        t0 = time.monotonic()
        try:
            inject()
        except Exception as exc:
            self.fault_errors.append(f"{name}: {type(exc).__name__}: {exc}")
        self.faults[name] += 1
        self.recoveries_s.setdefault(name, []).append(time.monotonic() - t0)


def _openai_error(resp: httpx.Response) -> bool:
    try:
        err = resp.json()["error"]
    except Exception:
        return False
    return isinstance(err, dict) and {"message", "type", "code", "param"} <= set(err)


class Client:
    """One user's loop of scenarios (all over HTTP, as a browser would)."""

    def __init__(self, n: int, system: System, key: str, tally: Tally, plan: Plan):
        headers = {"Authorization": f"Bearer {key}"}
        self.n, self.tally, self.rng = n, tally, random.Random(plan.seed * 100 + n)
        self.weights = [40, 25, 15, 10, 10, 10 if plan.outage_s else 0]
        self.untouched: list[Req] = []
        self.cmd = httpx.AsyncClient(base_url=system.command_url, headers=headers, timeout=30)
        self.query = httpx.AsyncClient(
            base_url=system.query_url, headers=headers, timeout=httpx.Timeout(30, read=40)
        )

    async def close(self) -> None:
        await self.cmd.aclose()
        await self.query.aclose()

    async def loop(self, until: float) -> None:
        i = 0
        while time.monotonic() < until:
            mode = self.rng.choices(
                ["full", "resume", "cancel", "delete", "none", "late"], self.weights
            )[0]
            await self.scenario(mode, f"c{self.n} n{i} " + " ".join(self.rng.sample(WORDS, 4)))
            i += 1
            await asyncio.sleep(self.rng.uniform(0, 0.5))

    async def scenario(self, mode: str, content: str) -> None:
        req = await self.submit(content, mode)
        if req is None:
            return
        if mode == "none":
            self.untouched.append(req)
            return
        if mode == "late":
            await asyncio.sleep(self.rng.uniform(62, 75))
        await self.stream(req, act_after=self.rng.randint(1, 6))  # "delete" may act mid-way
        if mode == "delete" and not req.deleted:
            await self.delete(req)

    async def stream_untouched(self) -> None:
        """After the chaos: the streams of prompts nobody watched, replayed from the start."""
        await asyncio.gather(*(self.stream(req, act_after=10**9) for req in self.untouched))

    async def submit(self, content: str, mode: str) -> Req | None:
        """POST until acknowledged, bounded; one Idempotency-Key for the retries."""
        body = {"model": SCRIPTED_MODEL, "messages": [{"role": "user", "content": content}]}
        headers = {"Prefer": "respond-async", "Idempotency-Key": f"chaos-{os.urandom(8).hex()}"}
        for _ in range(20):
            try:
                resp = await self.cmd.post("/v1/chat/completions", json=body, headers=headers)
            except httpx.TransportError as exc:
                self.tally.transport_errors[f"POST completions {type(exc).__name__}"] += 1
                await asyncio.sleep(1)
                continue
            self.tally.note("POST /v1/chat/completions", resp)
            if resp.status_code == 202:
                data = resp.json()
                req = Req(data["id"], data["conversation_id"], content, self.n, mode)
                self.tally.requests.append(req)
                return req
            if resp.status_code not in (409, 429, 503) and resp.status_code < 500:
                self.tally.failures.append(f"submit {content!r}: {resp.status_code} {resp.text}")
                return None
            await asyncio.sleep(1)
        self.tally.submits_given_up += 1
        return None

    async def stream(self, req: Req, act_after: int) -> None:
        """Read the stream to its end across hang-ups, drops and restarts (resuming with
        Last-Event-ID), following `reset`; note protocol violations as failures."""
        text, attempt, next_seq, last_id = "", 1, 0, None
        deadline = time.monotonic() + STREAM_DEADLINE_S
        acted, refused = False, ""
        self.tally.streams["opened"] += 1
        while time.monotonic() < deadline:
            headers: dict[str, str] = {"Last-Event-ID": last_id} if last_id else {}
            url = f"/v1/chat/completions/{req.id}/stream"
            seen = 0
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    async with self.query.stream("GET", url, headers=headers) as resp:
                        if resp.status_code != 200:
                            await resp.aread()
                            self.tally.note("GET stream", resp)
                            refused = f", last refusal {resp.status_code} {resp.text[:80]!r}"
                            if resp.status_code == 404 and req.deleted:
                                self.tally.streams["404 after delete"] += 1
                                return
                            await asyncio.sleep(1)
                            continue
                        async for ev in aevents(resp):
                            if ev.event == "reset":
                                text, attempt, next_seq = "", ev.data["attempt"], 0
                                self.tally.streams["resets"] += 1
                            elif ev.event == "chunk":
                                got = (ev.data["attempt"], ev.data["seq"])
                                if last_id is None and got[1] == 0:
                                    attempt = got[0]  # no content yet: no reset is owed
                                if got != (attempt, next_seq):
                                    self.tally.failures.append(
                                        f"{req.id}: chunk {got} where ({attempt}, {next_seq})"
                                        f" was due (after id {last_id})"
                                    )
                                    attempt = ev.data["attempt"]
                                text += ev.data["text"]
                                next_seq, last_id, seen = ev.data["seq"] + 1, ev.id, seen + 1
                            elif ev.event == "done":
                                req.streamed, req.done = text, ev.data
                                self.tally.streams["ended done"] += 1
                                return
                            elif ev.event == "error":
                                req.stream_error = ev.data
                                self.tally.streams["ended error"] += 1
                                return
                            if not acted and seen >= act_after:
                                acted = True
                                if await self.act(req):
                                    break  # hung up: resume below
                        else:
                            self.tally.streams["closed by server without an end"] += 1
                            continue
                self.tally.streams["hung up and resumed"] += 1
                await asyncio.sleep(self.rng.uniform(0.1, 1.5))
            except httpx.TransportError as exc:
                self.tally.transport_errors[f"stream {type(exc).__name__}"] += 1
                self.tally.streams["dropped and resumed"] += 1
                await asyncio.sleep(0.5)
            except TimeoutError:
                break
        self.tally.streams["left open"] += 1
        self.tally.failures.append(
            f"{req.id} ({req.mode}): stream not ended by done/error within"
            f" {STREAM_DEADLINE_S:.0f}s (last id {last_id}, {len(text)} chars{refused})"
        )

    async def act(self, req: Req) -> bool:
        """The scenario's move mid-stream; True when the client hangs up to resume."""
        if req.mode == "resume":
            return True
        if req.mode == "cancel":
            await self.command("POST", f"/v1/chat/completions/{req.id}/cancel", req)
        elif req.mode == "delete" and not req.deleted and self.rng.random() < 0.5:
            await self.delete(req)
        return False

    async def delete(self, req: Req) -> None:
        await self.command("DELETE", f"/v1/conversations/{req.conversation_id}", req)

    async def command(self, method: str, url: str, req: Req) -> None:
        for _ in range(10):
            try:
                resp = await self.cmd.request(method, url)
            except httpx.TransportError as exc:
                self.tally.transport_errors[f"{method} {type(exc).__name__}"] += 1
                await asyncio.sleep(1)
                continue
            self.tally.note(f"{method} {url.split('/')[2]}", resp)
            if resp.status_code in (200, 202):
                req.cancel_asked |= method == "POST"
                req.deleted |= method == "DELETE"
                return
            if resp.status_code < 500 and resp.status_code not in (409, 429):
                self.tally.failures.append(f"{method} {url}: {resp.status_code} {resp.text}")
                return
            await asyncio.sleep(1)


class Faults:
    """Kills and restarts the system's parts in turn, in a thread (the restarts block)."""

    def __init__(self, system: System, services: Services, tally: Tally, plan: Plan) -> None:
        self.system, self.services, self.tally = system, services, tally
        self.stop = threading.Event()
        self.outage_s = plan.outage_s
        self.order: tuple[str, ...] = ("replica", "processors", "query_api", "kafka")
        if plan.outage_s:
            self.order += ("processors_outage",)

    def run(self, until: float, every_s: float) -> None:
        i = 0
        while not self.stop.wait(every_s) and time.monotonic() < until:
            name = self.order[i % len(self.order)]
            i += 1
            self.tally.fault(name, getattr(self, name))

    def replica(self) -> None:
        (pid, *_) = replica_pids(self.system)
        os.kill(pid, signal.SIGKILL)
        self._until(lambda: replica_pids(self.system) not in ([], [pid]), "a new replica")
        self._until(lambda: self.system.healthy(component("inference")), "inference healthy")

    def processors(self) -> None:
        self._restart("processors")

    def processors_outage(self) -> None:
        sigkill_component(self.system, "processors")
        self.stop.wait(self.outage_s)
        self.system.start(component("processors"))

    def query_api(self) -> None:
        self._restart("query_api")

    def kafka(self) -> None:
        assert self.services.stack is not None
        self.services.stack.kafka.stop()
        time.sleep(2)
        self.services.stack.kafka.start()

    def _restart(self, name: str) -> None:
        sigkill_component(self.system, name)
        time.sleep(1)
        self.system.start(component(name))

    def _until(self, check: Any, what: str) -> None:
        deadline = time.monotonic() + RECOVER_S
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {RECOVER_S:.0f}s")
            time.sleep(0.5)


async def drive(plan: Plan, system: System, services: Services, keys: list[str]) -> Tally:
    tally = Tally()
    clients = [Client(n, system, keys[n % len(keys)], tally, plan) for n in range(plan.clients)]
    faults = Faults(system, services, tally, plan)
    until = time.monotonic() + plan.duration_s
    chaos = asyncio.create_task(asyncio.to_thread(faults.run, until, plan.fault_every_s))
    try:
        try:
            await asyncio.gather(*(c.loop(until) for c in clients))
        finally:
            faults.stop.set()
            await chaos
        await asyncio.gather(*(c.stream_untouched() for c in clients))
    finally:
        for c in clients:
            await c.close()
    return tally


def run_chaos(services: Services, plan: Plan, run_dir: Path) -> Any:
    """The whole run on a private stack; returns the checks' report."""
    from bench.chaos_checks import check

    with (
        private_stack(services) as private,
        isolated_settings(private, "chaos") as settings,
        running_system(settings, run_dir, env=ENV) as system,
    ):
        with pg_connect(settings) as conn:
            keys = [create_key(conn, user) for user in ("chaos-a", "chaos-b")]
        started = time.monotonic()
        tally = asyncio.run(drive(plan, system, private, keys))
        report = asyncio.run(check(plan, system, tally, keys))
        report.figures["wall time (s)"] = round(time.monotonic() - started)
        return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=240.0, help="seconds of chaos")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--fault-every", type=float, default=15.0, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--outage", type=float, default=90.0, help="a long processors outage (s); 0: none"
    )
    args = parser.parse_args()
    plan = Plan(args.duration, args.clients, args.fault_every, args.seed, args.outage)
    run_dir = Path(tempfile.mkdtemp(prefix="chatlog-chaos-"))
    with provide_services() as services:
        if services.source != "local" or services.stack is None:
            raise SystemExit("the chaos run restarts Kafka: it needs the local launcher")
        report = run_chaos(services, plan, run_dir)
    print(report.render())
    print(f"logs: {run_dir}/logs")
    raise SystemExit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
