"""The chat page's speed, measured in the browser (Debian's chromium via Playwright) on the
whole system with the scripted engine, through the gateway:

    CHATLOG_TEST_KEEP=1 .venv/bin/python -m bench.page [--loads 7] [--tokens 2000] [--rate 400]
        [--trace /tmp/page-trace.json]

1. Page weight: the compressed bytes of everything the page loads (`encodedBodySize` of
   the navigation and its resources, gzip as the gateway sends it).
2. First paint: `first-contentful-paint` of a fresh load (no cache), signed out (the sign-in
   form) and signed in (the session cookie; until the sidebar is drawn as well), median and
   max of `--loads` loads.
3. Long tasks while a `--tokens`-token answer streams in at `--rate` tokens/s: every
   main-thread task over 50 ms (the browser's Long Tasks API), from Enter to the stored
   answer on screen. With `--trace FILE`, Chromium's performance trace of that stream is
   saved, and each long task is told apart: its wall time against the main thread's CPU
   time in it (on a loaded machine the gap is the OS not running the browser), and where
   that CPU time went (script, style, layout, paint, GC: self time per trace event).
Uses the test stack through the harness (a private topic prefix / database, removed after).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Locator, Page, sync_playwright

from infra.auth import apply_auth_ddl, create_key
from infra.clients import pg_connect
from infra.harness import isolated_settings, provide_services
from tests.e2e.conftest import running_system

# Markdown, so the answer exercises the renderer (one line: the engine echoes the last).
PROMPT = "Some *emphasis*, **strong** words, `inline code` and a [link](https://example.com)."
LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longTasks.push({start: e.startTime, ms: e.duration});
}).observe({type: "longtask", buffered: true});
"""


def send_until_finished(
    browser: Browser, page: Page, box: Locator, *, trace: bool
) -> tuple[float, float, bytes | None]:
    """Enter in `box`, then wait for the answer to be finished on screen: the page's clock
    at both ends (ms), and Chromium's trace of the span when `trace`."""
    if trace:
        browser.start_tracing(page=page, categories=TRACE_CATEGORIES)
    start = float(page.evaluate("performance.now()"))
    box.press("Enter")
    page.locator("article.msg.assistant[data-status=finished]").wait_for()
    end = float(page.evaluate("performance.now()"))
    return start, end, browser.stop_tracing() if trace else None


def weight(page: Page) -> dict[str, Any]:
    entries = page.evaluate(
        """() => [...performance.getEntriesByType('navigation'),
                  ...performance.getEntriesByType('resource')]
              .map(e => ({name: e.name, encoded: e.encodedBodySize, decoded: e.decodedBodySize}))"""
    )
    return {
        "files": {e["name"].rsplit("/", 1)[-1] or "/": e["encoded"] for e in entries},
        "compressed": sum(e["encoded"] for e in entries),
        "uncompressed": sum(e["decoded"] for e in entries),
    }


def fcp(page: Page) -> float:
    return float(
        page.evaluate("() => performance.getEntriesByName('first-contentful-paint')[0].startTime")
    )


TRACE_CATEGORIES = [
    "toplevel",
    "devtools.timeline",
    "disabled-by-default-devtools.timeline",
    "blink.user_timing",
    "v8",
    "v8.execute",
]
TASKS = {"RunTask", "ThreadControllerImpl::RunTask"}


def _detail(e: dict[str, Any]) -> str:
    """What a trace event was about: the event type, the script's function, the timer."""
    data = e.get("args", {}).get("data", {}) or {}
    what = data.get("type") or data.get("functionName") or ""
    return f"{e['name']}({what})" if what else str(e["name"])


def trace_tasks(trace: bytes, over_ms: float = 50.0) -> dict[str, Any]:
    """The renderers' main-thread tasks in a Chromium trace: how many, how long, and for
    each one over `over_ms`, its wall and CPU time and its self CPU time per event name."""
    events = json.loads(trace)["traceEvents"]
    mains = {
        (e["pid"], e["tid"])
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "thread_name"
        and e["args"].get("name") == "CrRendererMain"
    }
    by_thread: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and (e["pid"], e["tid"]) in mains and "dur" in e:
            by_thread[(e["pid"], e["tid"])].append(e)
    durations: list[float] = []
    cpu: list[float] = []
    long: list[dict[str, Any]] = []
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        tasks, end = [], -1.0
        for e in evs:  # the outermost ones: a RunTask nests in ThreadControllerImpl::RunTask
            if e["name"] in TASKS and e["ts"] >= end:
                tasks.append(e)
                end = e["ts"] + e["dur"]
        durations += [t["dur"] / 1000 for t in tasks]
        cpu += [t.get("tdur", 0) / 1000 for t in tasks]
        for t in tasks:
            if t["dur"] / 1000 <= over_ms:
                continue
            inside = [
                e for e in evs if t["ts"] <= e["ts"] and e["ts"] + e["dur"] <= t["ts"] + t["dur"]
            ]
            self_us: dict[str, float] = defaultdict(float)
            stack: list[dict[str, Any]] = []
            for e in inside:
                while stack and e["ts"] >= stack[-1]["ts"] + stack[-1]["dur"]:
                    stack.pop()
                if stack:
                    self_us[_detail(stack[-1])] -= e.get("tdur", e["dur"])
                self_us[_detail(e)] += e.get("tdur", e["dur"])
                stack.append(e)
            top = sorted(self_us.items(), key=lambda kv: -kv[1])[:8]
            long.append(
                {
                    "wall_ms": round(t["dur"] / 1000, 1),
                    "cpu_ms": round(t.get("tdur", 0) / 1000, 1),
                    "self_ms": {k: round(v / 1000, 1) for k, v in top},
                }
            )
    durations.sort()
    cpu.sort()
    n = len(durations)
    return {
        "tasks": n,
        "wall": {
            "sum_ms": round(sum(durations)),
            "p99_ms": round(durations[int(n * 0.99)], 1) if n else 0,
            "max_ms": round(durations[-1], 1) if n else 0,
            "over_50ms": sum(1 for d in durations if d > over_ms),
        },
        "cpu": {
            "sum_ms": round(sum(cpu)),
            "p99_ms": round(cpu[int(n * 0.99)], 1) if n else 0,
            "max_ms": round(cpu[-1], 1) if n else 0,
            "over_50ms": sum(1 for d in cpu if d > over_ms),
        },
        "long": long,
    }


def run(origin: str, key: str, loads: int, trace: str | None) -> dict[str, Any]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        signed_out, signed_in, sidebar = [], [], []
        for i in range(loads):
            ctx = browser.new_context(base_url=origin)  # a fresh context: nothing cached
            page = ctx.new_page()
            page.goto("/")
            page.get_by_label("API key").wait_for()
            signed_out.append(fcp(page))
            if i == 0:
                out["weight"] = weight(page)
            page.get_by_label("API key").fill(key)
            page.get_by_role("button", name="Sign in").click()
            page.locator("nav").wait_for()
            page.goto("about:blank")
            page.goto("/")
            page.locator("nav .conv, nav .new").first.wait_for()
            signed_in.append(fcp(page))
            sidebar.append(float(page.evaluate("performance.now()")))
            ctx.close()
        if loads:
            out["first_paint_ms"] = {
                "signed_out": {"median": statistics.median(signed_out), "max": max(signed_out)},
                "signed_in": {"median": statistics.median(signed_in), "max": max(signed_in)},
                "signed_in_sidebar_drawn_by": {"median": statistics.median(sidebar)},
            }

        ctx = browser.new_context(base_url=origin)
        ctx.add_init_script(LONG_TASKS)
        page = ctx.new_page()
        page.set_default_timeout(120_000)
        page.goto("/")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.locator("nav").wait_for()
        # the scripted engine echoes the prompt `repeat` times (cut at max_tokens): a short
        # prompt leaves the context (4,096 bytes) room for the whole answer
        prompt = PROMPT
        box = page.get_by_label("Message", exact=True)
        box.fill(prompt)
        start, end, raw = send_until_finished(browser, page, box, trace=trace is not None)
        if trace is not None and raw is not None:
            Path(trace).write_bytes(raw)
            out["trace"] = trace_tasks(raw)
        tasks = [t for t in page.evaluate("window.__longTasks") if t["start"] >= start]
        shown = page.locator("article.msg.assistant .md").last.inner_text()
        stored = page.evaluate(
            """async () => {
              const cid = new URLSearchParams(location.hash.slice(1)).get('c');
              const r = await fetch(`/v1/conversations/${cid}/messages`);
              return (await r.json()).data.find(m => m.role === 'assistant').tokens;
            }"""
        )
        out["stream"] = {
            "answer_tokens": stored,
            "answer_chars_shown": len(shown),
            "seconds": round((end - start) / 1000, 2),
            "long_tasks_over_50ms": len(tasks),
            "longest_task_ms": max((t["ms"] for t in tasks), default=0),
            "long_tasks_at_s": [
                [round((t["start"] - start) / 1000, 2), round(t["ms"])] for t in tasks
            ],
        }
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", type=int, default=7, help="0: the stream only")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=400, help="scripted tokens/s")
    parser.add_argument("--trace", help="save Chromium's trace of the stream here (JSON)")
    args = parser.parse_args()
    env = {
        "CHATLOG_SCRIPTED_TOKEN_RATE": str(args.rate),
        "CHATLOG_SCRIPTED_REPLY_REPEAT": str(args.tokens // len(f"Echo: {PROMPT} ") + 1),
        "CHATLOG_DEFAULT_MAX_TOKENS": str(args.tokens),
    }
    with (
        provide_services() as services,
        isolated_settings(services, "bench_page") as settings,
        tempfile.TemporaryDirectory() as run_dir,
        running_system(settings, Path(run_dir), env) as system,
    ):
        with pg_connect(settings) as conn:
            apply_auth_ddl(conn)
            key = create_key(conn, "bench")
        result = run(system.base_url.removesuffix("/v1"), key, args.loads, args.trace)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
