"""The chaos run's final checks (`bench/chaos.py`): let the system settle, then compare
what the clients were told with the log and the read model. Every failure names the
request and what was expected; the figures say how much was checked.

How "exactly one final event" is counted: per acknowledged request, read the topic from
its beginning, take the highest attempt any of the request's events names, and count the
DISTINCT final events (CompletionFinished / CompletionFailed, by event_id) of that
attempt. A redelivered copy of one event (same event_id) counts once; a second final with
another id is a second outcome. chat.answers (each attempt's final, written by the
replica beside chat.completions) is counted the same way when this build writes it, and
its outcome must agree with chat.completions'.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from infra.system import COMPONENTS, System
from tests.e2e.faults import (
    Final,
    Outcomes,
    digest,
    echo,
    outcomes,
    processors_cmd,
)

SETTLE_S = 240.0  # every acknowledged request must be terminal within this after the chaos
TERMINAL = ("finished", "cancelled", "failed")


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def render(self) -> str:
        width = max(len(k) for k in self.figures)
        lines = [f"{k:<{width}}  {v}" for k, v in self.figures.items()]
        if self.failures:
            lines += [f"FAILURES ({len(self.failures)}):", *(f"  - {f}" for f in self.failures)]
        return "\n".join(lines)


class Checker:
    def __init__(self, system: System, tally: Any, keys: list[str]) -> None:
        self.system, self.tally = system, tally
        self.report = Report()
        self.fail = self.report.failures.append
        self.queries = [
            httpx.AsyncClient(
                base_url=system.query_url, headers={"Authorization": f"Bearer {k}"}, timeout=30
            )
            for k in keys
        ]
        self.deadline = time.monotonic() + SETTLE_S
        self.texts_equal = 0

    async def get(self, req: Any, url: str, **kw: Any) -> httpx.Response | None:
        client = self.queries[req.user % len(self.queries)]
        try:  # headers only: an SSE body may never end (that is checked elsewhere)
            async with asyncio.timeout(40), client.stream("GET", url, **kw) as stream:
                resp: httpx.Response = stream
                if not url.endswith("/stream") or resp.status_code != 200:
                    await resp.aread()
        except (httpx.TransportError, TimeoutError):
            return None
        if url.endswith("/stream") and resp.status_code == 200:
            return resp  # its body is not read: a 200 is the answer here
        self.tally.note(f"GET {url.split('/')[2]} (final checks)", resp)
        return resp

    async def until(self, probe: Any, timeout_s: float | None = None) -> Any:
        """Poll `probe` (async, returns (ok, last)) until ok or the deadline; the last."""
        end = self.deadline if timeout_s is None else time.monotonic() + timeout_s
        while True:
            ok, last = await probe()
            if ok or time.monotonic() > end:
                return ok, last
            await asyncio.sleep(0.5)

    async def settle_services(self) -> None:
        """Every part up again (a fault that failed to recover is restarted, and said)."""
        for c in COMPONENTS:
            if not self.system.healthy(c):
                self.fail(f"{c.name} was not healthy after the chaos; restarted")
                await asyncio.to_thread(self.system.stop, c)
                await asyncio.to_thread(self.system.start, c)

    async def check_request(self, req: Any) -> str | None:
        """Read model vs what the client saw; the request's outcome ("deleted" if gone)."""
        if req.deleted:
            return await self.check_deleted(req)

        async def state() -> tuple[bool, Any]:
            resp = await self.get(req, f"/v1/chat/completions/{req.id}")
            body = resp.json() if resp is not None and resp.status_code == 200 else None
            return body is not None and body["status"] in TERMINAL, body

        ok, st = await self.until(state)
        if not ok:
            self.fail(f"{req.id} ({req.mode}): not terminal after {SETTLE_S:.0f}s; last {st}")
            return None
        url = f"/v1/conversations/{req.conversation_id}/messages"

        async def stored() -> tuple[bool, Any]:
            resp = await self.get(req, url, params={"limit": 100})
            if resp is None or resp.status_code != 200:
                return False, None if resp is None else resp.status_code
            mine = [(m["status"], m["content"]) for m in resp.json()["data"]
                    if m["request_id"] == req.id and m["role"] == "assistant"]  # fmt: skip
            return mine == [(st["status"], st["text"])], mine

        ok, mine = await self.until(stored, timeout_s=30)
        if not ok:
            self.fail(f"{req.id}: history holds {mine!r}, status says {st['status']!r}"
                      f" with {st['text']!r} (one assistant message expected)")  # fmt: skip
        if st["status"] == "finished" and st["finish_reason"] == "stop":
            if st["text"] != echo(req.content):
                self.fail(f"{req.id}: stored {st['text']!r}, the engine said"
                          f" {echo(req.content)!r}")  # fmt: skip
        elif st["status"] == "cancelled" and not echo(req.content).startswith(st["text"]):
            self.fail(f"{req.id}: cancelled text {st['text']!r} is no prefix of the answer")
        if req.streamed is not None:
            if req.streamed == st["text"]:
                self.texts_equal += 1
            else:
                self.fail(f"{req.id} ({req.mode}): streamed {req.streamed!r} but stored"
                          f" {st['text']!r} (status {st['status']})")  # fmt: skip
        return str(st["status"])

    async def check_deleted(self, req: Any) -> str:
        """A deleted conversation's history, its requests' status and a newly opened
        stream answer 404 (issue #12 item 6)."""

        async def one(what: str, url: str) -> None:
            async def gone() -> tuple[bool, Any]:
                resp = await self.get(req, url)
                if resp is None:
                    return False, "no answer"
                body = _gist(resp) if resp.is_stream_consumed else "(an SSE stream)"
                return resp.status_code == 404, f"{resp.status_code} {body}"

            ok, last = await self.until(gone, timeout_s=60)
            if not ok:
                self.fail(f"{req.id}: {what} of a deleted conversation answers {last}, not 404")

        await asyncio.gather(
            one("history", f"/v1/conversations/{req.conversation_id}/messages"),
            one("status", f"/v1/chat/completions/{req.id}"),
            one("a new stream", f"/v1/chat/completions/{req.id}/stream"),
        )
        return "deleted"

    def check_log(self, requests: list[Any]) -> None:
        settings = self.system.settings
        logs = {t: outcomes(settings, t) for t in (settings.topics.completions,
                                                   settings.topics.answers)}  # fmt: skip
        completions, answers = logs[settings.topics.completions], logs[settings.topics.answers]
        one = sum(self._one_final(completions, r, "chat.completions") for r in requests)
        self.report.figures["exactly one final event (chat.completions)"] = f"{one}/{len(requests)}"
        if not answers.finals:
            self.report.figures["exactly one final event (chat.answers)"] = (
                "topic empty (not written)"
            )
            return
        one = 0
        for r in requests:
            if self._one_final(answers, r, "chat.answers"):
                one += 1
                a, c = answers.of_highest(r.id), completions.of_highest(r.id)
                if [_outcome(f) for f in a] != [_outcome(f) for f in c]:
                    self.fail(f"{r.id}: chat.answers says {a} but chat.completions {c}")
        self.report.figures["exactly one final event (chat.answers)"] = f"{one}/{len(requests)}"

    def _one_final(self, log: Outcomes, req: Any, topic: str) -> bool:
        finals = log.of_highest(req.id)
        if len(finals) == 1:
            return True
        every = sorted(log.finals.get(req.id, {}).values(), key=lambda f: f.attempt)
        self.fail(f"{req.id} ({req.mode}): {len(finals)} final events of its highest attempt"
                  f" {log.highest.get(req.id)} in {topic}, 1 expected; all finals:"
                  f" {[(f.kind, f.attempt, f.detail, f.event_id[:8]) for f in every]}")  # fmt: skip
        return False

    async def open_subscribers(self) -> int | None:
        async def zero() -> tuple[bool, Any]:
            try:
                resp = await self.queries[0].get("/metrics")
            except httpx.TransportError:
                return False, None
            for line in resp.text.splitlines():
                if line.startswith("chatlog_query_subscribers "):
                    value = float(line.split()[1])
                    return value == 0, value
            return False, None

        _ok, value = await self.until(zero, timeout_s=60)
        return int(value) if value is not None else None

    def check_digest(self) -> None:
        try:
            before = digest(self.system, "postgres")
            processors_cmd(self.system, "replay", "--projection", "postgres", "--quiet")
            after = digest(self.system, "postgres")
        except Exception as exc:  # a lag that never drains, a replay that fails: reported
            self.fail(f"digest/rebuild did not complete: {type(exc).__name__}: {str(exc)[:300]}")
            self.report.figures["postgres digest == fresh rebuild"] = "not measured"
            return
        same = before == after
        self.report.figures["postgres digest == fresh rebuild"] = "yes" if same else "NO"
        if not same:
            diff = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()
                    if before.get(k) != after.get(k)}  # fmt: skip
            self.fail(f"the read model differs from a fresh rebuild: {diff}")

    async def close(self) -> None:
        for q in self.queries:
            await q.aclose()


def _gist(resp: httpx.Response) -> str:
    """A response body in a few words: its `status` field when it has one."""
    try:
        return f"with status {resp.json()['status']!r}"
    except Exception:
        return repr(resp.text[:70])


def _outcome(f: Final) -> tuple[str, int, str]:
    return (f.kind, f.attempt, f.detail)


async def check(plan: Any, system: System, tally: Any, keys: list[str]) -> Report:
    c = Checker(system, tally, keys)
    fig = c.report.figures
    try:
        fig["chaos (s) / clients / fault every (s)"] = (
            f"{plan.duration_s:.0f} / {plan.clients} / {plan.fault_every_s:.0f}"
        )
        fig["faults"] = ", ".join(f"{k} x{v}" for k, v in sorted(tally.faults.items()))
        fig["time to recover per fault, max (s)"] = ", ".join(
            f"{k} {max(v):.0f}" for k, v in sorted(tally.recoveries_s.items()))  # fmt: skip
        for err in tally.fault_errors:
            c.fail(f"fault did not recover: {err}")
        await c.settle_services()
        reqs = tally.requests
        fig["prompts acknowledged (202)"] = len(reqs)
        fig["submits given up (never acknowledged)"] = tally.submits_given_up
        sem = asyncio.Semaphore(48)

        async def one(r: Any) -> str | None:
            async with sem:
                return await c.check_request(r)

        states = await asyncio.gather(*(one(r) for r in reqs))
        fig["outcomes"] = ", ".join(
            f"{s} {states.count(s)}" for s in ("finished", "cancelled", "failed", "deleted", None)
            if states.count(s))  # fmt: skip
        streamed = sum(r.streamed is not None and not r.deleted for r in reqs)
        fig["fully streamed texts equal to stored"] = f"{c.texts_equal}/{streamed}"
        fig["streams"] = ", ".join(f"{k} {v}" for k, v in tally.streams.items())
        fig["streams left open (client side)"] = tally.streams["left open"]
        fig["SSE subscribers open at the end (server)"] = await c.open_subscribers()
        if fig["SSE subscribers open at the end (server)"] != 0:
            c.fail(f"the query API still counts {fig['SSE subscribers open at the end (server)']}"
                   " open SSE subscribers after every client hung up")  # fmt: skip
        try:
            await asyncio.to_thread(c.check_log, reqs)
        except Exception as exc:
            c.fail(f"could not read the log: {type(exc).__name__}: {str(exc)[:300]}")
        await asyncio.to_thread(c.check_digest)
        fig["refusals (OpenAI-shaped 409/429/503)"] = sum(tally.refusals.values())
        fig["transport errors (part down)"] = sum(tally.transport_errors.values())
        fig["HTTP statuses"] = dict(sorted(tally.statuses.items()))
        fig["unexpected 5xx"] = len(tally.unexpected_5xx)
        c.report.failures.extend(f"5xx: {x}" for x in tally.unexpected_5xx)
        c.report.failures[:0] = tally.failures
        fig["failures"] = len(c.report.failures)
    finally:
        await c.close()
    return c.report
