"""The page's answer stream resumes from the right place, even right after a `reset`.

`web/src/stream.js` `AnswerStream` reopens a stream that failed at the HTTP level (the
gateway's 502 while the query API is away) with `starting_after=<last event id>`. After
a `reset` (a new attempt, or the whole stored text of an attempt whose chunks expired)
and before the next chunk, it knows no event to resume after: it must reopen from the
start, which brings that attempt whole, not ask for `<attempt>:-1`, which the API refuses
(400 `invalid_event_id`) on every retry. The module is bundled by the page's own esbuild
and run in Debian's chromium with an EventSource that records what it is asked to open.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

from tests.browser.modules import bundle, evaluate

# An EventSource that opens nothing: it records its URLs and lets the check fire events.
FAKE_EVENT_SOURCE = """
window.opened = [];
window.EventSource = class {
  static CLOSED = 2;
  constructor(url) { this.url = url; this.listeners = {}; this.readyState = 0;
                     window.opened.push(url); window.last = this; }
  addEventListener(name, fn) { this.listeners[name] = fn; }
  fire(name, data, id) { this.listeners[name]({ data: JSON.stringify(data), lastEventId: id || "" }); }
  close() { this.readyState = 2; }
};
"""

CHECK = """() => {
  const { AnswerStream } = chatlogStream;
  const texts = [];
  const on = { onText: (t) => texts.push(t), onState() {}, onDone() {}, onFail() {} };
  const s = new AnswerStream("req-1", {}, on);
  last.fire("chunk", { attempt: 1, seq: 0, text: "partial " }, "1:0");
  last.fire("chunk", { attempt: 1, seq: 1, text: "answer" }, "1:1");
  const afterChunks = s.url();
  last.fire("reset", { request_id: "req-1", attempt: 1 });
  const afterReset = s.url();
  last.fire("chunk", { attempt: 1, seq: 2147483647, text: "the whole answer" }, "1:2147483647");
  return { afterChunks, afterReset, afterWhole: s.url(), text: texts[texts.length - 1] };
}"""


@pytest.fixture(scope="module")
def stream() -> str:
    """web/src/stream.js as one script that defines `chatlogStream`."""
    return bundle("src/stream.js", "chatlogStream")


def test_a_stream_reopened_right_after_a_reset_starts_over_and_keeps_no_partial_text(
    browser: Browser, stream: str
) -> None:
    result = evaluate(browser, [FAKE_EVENT_SOURCE, stream], CHECK)
    base = "/v1/chat/completions/req-1/stream"
    assert result["afterChunks"] == f"{base}?starting_after=1%3A1"
    assert result["afterReset"] == base  # from the start: no `1:-1`, which gets a 400
    assert result["afterWhole"] == f"{base}?starting_after=1%3A2147483647"
    assert result["text"] == "the whole answer"  # the partial text is gone, not prefixed
