"""The chat page's own cost for a long, realistic answer, in the browser (Debian's chromium):

    .venv/bin/python -m bench.page_replay [--tokens 2000] [--rate 100 400] [--repeat 2]
        [--dist web/dist /tmp/old-dist]

`bench/page.py` streams what the scripted engine can write: the prompt's one line echoed,
one markdown paragraph of one byte per token. A real model's 2,000-token answer is ~8,000
characters of headings, paragraphs, lists, tables and code blocks, and the page's cost per
frame grows with it. So this serves the built page (each `--dist` in turn: old and new
builds compared in one run, alternating) and a stand-in for the few API calls of a new
chat: signed in, the models, the prompt's 202, the answer's SSE stream (the query API's
chunk frames, one every 5 ms or `1/rate`, as the inference worker's chunker sends them)
and the stored branch. Nothing else runs, so what it measures is the page: every
main-thread task over 50 ms (Long Tasks API) from Enter to the stored answer shown, and
from Chromium's trace each task's CPU time (`bench.page.trace_tasks`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, sync_playwright

from bench.page import LONG_TASKS, send_until_finished, trace_tasks

PROMPT = "Explain event sourcing, with an example."
CHARS_PER_TOKEN = 4  # English text in a BPE vocabulary
SECTION = """## Part {n}: the idea

An *event-sourced* service stores **what happened**, not only where things ended: each \
change is an event appended to a log (`PromptSubmitted`, `TokenChunk`), and the state is \
a [projection](https://martinfowler.com/eaaDev/EventSourcing.html) of those events.

- the log is the source of truth, so a projection can be **rebuilt** from it
- a reader never blocks a writer: `SELECT` runs on the read model
- replaying the log gives the state *at any point in time*

| event | effect |
|---|---|
| `PromptSubmitted` | a row in `messages` |
| `CompletionFinished` | the answer's status |

```python
def project(events):
    state = {{}}
    for e in events:  # the order of the log is the order of the facts
        state[e.key] = apply(state.get(e.key), e)
    return state
```

1. append the event
2. let the projections catch up
3. read from the projection

"""
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def answer(tokens: int) -> str:
    text, n = "", 1
    while len(text) < tokens * CHARS_PER_TOKEN:
        text += SECTION.format(n=n)
        n += 1
    return text[: tokens * CHARS_PER_TOKEN]


class StandIn(ThreadingHTTPServer):
    """The page's dist and the API calls of one new chat; `dist`/`rate` set per run."""

    daemon_threads = True

    def __init__(self, text: str) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.text = text
        self.dist = Path("web/dist")
        self.rate = 100
        self.title = ""


class Handler(BaseHTTPRequestHandler):
    server: StandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/v1/conversations":
            title = self.server.title
            data = [{"id": "c1", "title": title}] if title else []
            self.reply(
                200, {"object": "list", "data": data, "next_cursor": None, "has_more": False}
            )
        elif path == "/v1/models":
            self.reply(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        elif path == "/v1/chat/completions/r1/stream":
            self.stream()
        elif path == "/v1/conversations/c1/messages":
            same = {"request_id": "r1", "status": "finished", "sibling_count": 1}
            msgs: list[dict[str, Any]] = [
                {"id": "m2", "role": "assistant", "content": self.server.text, **same},
                {"id": "m1", "role": "user", "content": PROMPT, **same},
            ]
            self.reply(200, {"object": "list", "data": msgs, "has_more": False})
        else:
            self.static(path)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.reply(202, {"id": "r1", "conversation_id": "c1", "status": "queued"})

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.server.title = body["title"]
        self.reply(200, {"id": "c1", "title": body["title"]})

    def static(self, path: str) -> None:
        f = self.server.dist / (path.lstrip("/") or "index.html")
        if not f.is_file():
            self.reply(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        data = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES.get(f.suffix, "image/svg+xml"))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def stream(self) -> None:
        """The answer in chunk frames at `rate` tokens/s, on a fixed schedule (no drift)."""
        text, rate = self.server.text, self.server.rate
        interval = max(0.005, 1 / rate)
        per_chunk = max(1, round(rate * interval)) * CHARS_PER_TOKEN
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        start = time.monotonic()
        for seq, at in enumerate(range(0, len(text), per_chunk)):
            time.sleep(max(0.0, start + seq * interval - time.monotonic()))
            data = {"request_id": "r1", "attempt": 0, "seq": seq, "text": text[at : at + per_chunk]}
            self.wfile.write(f"event: chunk\nid: 0:{seq}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
        done = {"request_id": "r1", "finish_reason": "stop"}
        self.wfile.write(f"event: done\ndata: {json.dumps(done)}\n\n".encode())
        self.wfile.flush()
        self.close_connection = True


def one(browser: Browser, server: StandIn, trace: bool) -> dict[str, Any]:
    """A new chat, its prompt sent with Enter, until the stored answer is shown."""
    server.title = ""
    ctx = browser.new_context(base_url=f"http://127.0.0.1:{server.server_port}")
    ctx.add_init_script(LONG_TASKS)
    page = ctx.new_page()
    page.set_default_timeout(120_000)
    page.goto("/")
    box = page.get_by_label("Message", exact=True)
    box.fill(PROMPT)
    page.wait_for_timeout(1500)  # a person takes longer to type: the page is idle by then
    start, end, raw = send_until_finished(browser, page, box, trace=trace)
    cpu = trace_tasks(raw)["cpu"] if raw is not None else None
    every = page.evaluate("window.__longTasks")
    tasks = [t for t in every if t["start"] >= start]
    shown = page.locator("article.msg.assistant .md").last.inner_text()
    ctx.close()
    return {
        "seconds": round((end - start) / 1000, 2),
        "chars_shown": len(shown),
        "long_tasks_over_50ms": len(tasks),
        "longest_task_ms": round(max((t["ms"] for t in tasks), default=0)),
        "load_to_enter_long_tasks_ms": [round(t["ms"]) for t in every if t["start"] < start],
        "task_cpu_ms": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rate", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dist", nargs="+", default=["web/dist"])
    parser.add_argument("--no-trace", action="store_true", help="Long Tasks API only")
    args = parser.parse_args()
    server = StandIn(answer(args.tokens))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    results: list[dict[str, Any]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(args.repeat):
            for rate in args.rate:
                for dist in args.dist:
                    server.dist, server.rate = Path(dist), rate
                    r = one(browser, server, not args.no_trace)
                    results.append({"dist": dist, "rate": rate, **r})
                    print(json.dumps(results[-1]), flush=True)
        browser.close()
    server.shutdown()


if __name__ == "__main__":
    main()
