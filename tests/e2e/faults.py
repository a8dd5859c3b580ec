"""Helpers of the fault tests (`test_faults.py`): a private stack, process surgery, and the
invariants every fault test ends with.

The fault tests stop and restart Kafka, Postgres and Meilisearch. They do it on a stack
of their own (same launcher, same pinned binaries, own data directory and ports), never on
the shared test stack: other test modules, and other people's test runs on the same
machine, keep using that one while these tests take theirs down.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from infra.harness import Services
from infra.local import LocalStack
from infra.local.procs import read_pid
from infra.settings import InfraSettings
from infra.system import System, component
from schemas import decode
from schemas.events import (
    CompletionFailed,
    CompletionFinished,
    CompletionStarted,
    PromptSubmitted,
    TokenChunk,
)
from tests.e2e.conftest import User
from tests.e2e.sse import eventually

TERMINAL = ("finished", "cancelled", "failed")


# -- a private stack ----------------------------------------------------------------------
def _free_port_pair() -> int:
    """A port p with p and p + 1 free (Kafka's broker and controller listeners)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_stack(shared: Services) -> Iterator[Services]:
    """Kafka, Postgres and Meilisearch of our own, from the shared stack's installed tools.

    Lives under `<shared home>/faults/<id>` (its parents are already traversable by the
    Postgres user) and is stopped and removed afterwards.
    """
    home = shared.home / "faults" / uuid.uuid4().hex[:8]
    home.mkdir(parents=True)
    (home / "tools").symlink_to(shared.home / "tools")
    kafka_port = _free_port_pair()
    settings = InfraSettings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        postgres_url=f"postgresql://chatlog@127.0.0.1:{_free_port()}/chatlog",
        meili_url=f"http://127.0.0.1:{_free_port()}",
        meili_key=shared.meili_key,
    )
    stack = LocalStack(settings)
    try:
        stack.start()
        yield Services.local(stack)
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


# -- processes ----------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    children, out, todo = _children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def component_pid(system: System, name: str) -> int:
    pid = read_pid(system.pidfile(component(name)))  # the file holds "pid starttime"
    assert pid is not None and system.running(component(name)), f"{name} is not running"
    return pid


def replica_pids(system: System) -> list[int]:
    """The Ray Serve replica workers of this system's inference deployment (not another's:
    only descendants of our own `python -m inference`)."""
    root = component_pid(system, "inference")
    return [p for p in descendants(root) if "ServeReplica:inference" in cmdline(p)]


def sigkill_component(system: System, name: str) -> None:
    """SIGKILL a service's whole process group, reap it, forget its pid file (a crash)."""
    pid = component_pid(system, name)
    os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    system.pidfile(component(name)).unlink(missing_ok=True)


# -- operator commands --------------------------------------------------------------------
def processors_cmd(system: System, *args: str, timeout_s: float = 180) -> str:
    """`python -m processors ...` against the running system, as `chatlog` runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "processors", *args],
        env={**os.environ, **system.env()},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def projection_lag(system: System, projection: str) -> int:
    """Events of the log the projection's checkpoints have not passed (from `status`)."""
    lag = 0
    for line in processors_cmd(system, "status").splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == projection:
            lag += int(cols[-1])
    return lag


def digest(system: System, projection: str) -> dict[str, str]:
    """The projection's digest once it has caught up with the log."""
    eventually(lambda: projection_lag(system, projection) == 0, timeout_s=90, interval_s=0.5)
    result: dict[str, str] = json.loads(
        processors_cmd(system, "digest", "--projection", projection)
    )
    return result


# -- the log ------------------------------------------------------------------------------
def read_topic(settings: InfraSettings, topic: str) -> list[Any]:
    """Every event of `topic`, from the beginning to the current end of each partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"e2e-faults-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in parts:
            _lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > 0:
                ends[p] = hi
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        events: list[Any] = []
        deadline = time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            events.append(decode(msg.value(), msg.headers()))
            partition, offset = msg.partition(), msg.offset()
            if (
                partition is not None
                and offset is not None
                and offset + 1 >= ends.get(partition, 0)
            ):
                ends.pop(partition, None)
        assert not ends, f"could not read {topic} to its end: {ends}"
        return events
    finally:
        consumer.close()


# -- the invariants -----------------------------------------------------------------------
def echo(prompt: str) -> str:
    """What the scripted engine answers (see tests/e2e/conftest.py's system)."""
    return " ".join([f"Echo: {prompt}"] * 3)


@dataclass(frozen=True)
class Acked:
    """A prompt the command API acknowledged (202): the system owes it one final message."""

    user: User
    id: str
    conversation_id: str
    content: str
    stream_url: str


def final_state(acked: Acked) -> dict[str, Any] | None:
    resp = acked.user.query.get(f"/v1/chat/completions/{acked.id}")
    if resp.status_code != 200 or resp.json()["status"] not in TERMINAL:
        return None
    state: dict[str, Any] = resp.json()
    return state


def stored_answers(acked: Acked) -> list[dict[str, Any]] | None:
    """The request's assistant messages in history, once the projection made them final."""
    resp = acked.user.query.get(
        f"/v1/conversations/{acked.conversation_id}/messages", params={"limit": 100}
    )
    if resp.status_code != 200:
        return None
    mine = [
        m for m in resp.json()["data"] if m["request_id"] == acked.id and m["role"] == "assistant"
    ]
    if not mine or any(m["status"] not in TERMINAL for m in mine):
        return None
    return mine


def assert_consistent(system: System, acked: list[Acked], *, search: bool = False) -> None:
    """Every acknowledged prompt has exactly one final message (finished ones with the
    whole text), in the log and the read model; the read model equals a fresh rebuild."""
    for a in acked:
        state = eventually(functools.partial(final_state, a), timeout_s=90)
        if state["status"] == "finished":
            assert state["text"] == echo(a.content), a
        # the status may come from the hub, ahead of the projection: wait for history
        mine = eventually(functools.partial(stored_answers, a), timeout_s=90)
        assert [(m["status"], m["content"]) for m in mine] == [(state["status"], state["text"])]

    finals: dict[str, list[tuple[str, int]]] = {}
    for ev in read_topic(system.settings, system.settings.topics.completions):
        if isinstance(ev, CompletionFinished | CompletionFailed):
            finals.setdefault(ev.request_id, []).append((type(ev).__name__, ev.attempt))
    for a in acked:
        assert len(finals.get(a.id, [])) == 1, (a.id, finals.get(a.id))

    projections = ["postgres", "search"] if search else ["postgres"]
    for projection in projections:
        before = digest(system, projection)
        processors_cmd(system, "replay", "--projection", projection, "--quiet")
        assert digest(system, projection) == before, f"{projection} differs from a rebuild"


def prompts_in_log(settings: InfraSettings) -> list[PromptSubmitted]:
    return [
        ev
        for ev in read_topic(settings, settings.topics.conversations)
        if isinstance(ev, PromptSubmitted)
    ]


@dataclass(frozen=True)
class Final:
    """One final event of a request as it is in the log."""

    event_id: str
    kind: str  # "finished" or "failed"
    attempt: int
    detail: str  # finish_reason, or error_code
    text: str | None  # CompletionFinished v2's full text (None in v1 and for failures)


@dataclass
class Outcomes:
    """Per request in one topic: the highest attempt any of its events names, and its
    distinct final events. Distinct by event_id: at-least-once redelivery of ONE event
    (same event_id) counts once; two finals with different ids are two outcomes."""

    highest: dict[str, int] = field(default_factory=dict)
    finals: dict[str, dict[str, Final]] = field(default_factory=dict)

    def add(self, ev: Any) -> None:
        """Take one event of the topic (others than a completion's are ignored)."""
        if not isinstance(
            ev, CompletionStarted | TokenChunk | CompletionFinished | CompletionFailed
        ):
            return
        rid = ev.request_id
        self.highest[rid] = max(self.highest.get(rid, 0), ev.attempt)
        if isinstance(ev, CompletionFinished):
            final = Final(ev.event_id, "finished", ev.attempt, ev.finish_reason, ev.text)
        elif isinstance(ev, CompletionFailed):
            final = Final(ev.event_id, "failed", ev.attempt, ev.error_code, None)
        else:
            return
        self.finals.setdefault(rid, {})[ev.event_id] = final

    def of_highest(self, request_id: str) -> list[Final]:
        top = self.highest.get(request_id, 0)
        return [f for f in self.finals.get(request_id, {}).values() if f.attempt == top]


def outcomes(settings: InfraSettings, topic: str) -> Outcomes:
    """The outcomes of every request in `topic` (chat.completions or chat.answers)."""
    out = Outcomes()
    for ev in read_topic(settings, topic):
        out.add(ev)
    return out
