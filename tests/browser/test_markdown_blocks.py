"""The live answer's block-by-block renderer draws what the whole-text renderer draws.

`web/src/markdown.js` `BlockRenderer` renders a finished block once and redraws only the
open last one (a long answer's frames stay short). Whatever the text, after every update
its DOM must be the one `renderMarkdown` gives for the whole text so far: a user must see
the same page while an answer is written as after a reload. The module is bundled by the
page's own esbuild and run in Debian's chromium, the browser the page runs in; no system
is needed.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

from tests.browser.modules import bundle, evaluate

# Every block kind the page renders, and the shapes that change a block above them when
# more text arrives (a setext underline, a list turning loose, a fence closing).
ANSWER = """# A title

Some *emphasis*, **strong** words, `inline code`, a [link](https://example.com) and
<img src=x onerror=alert(1)> written as text.

Setext heading
==============

- one
- two

- loose now
  1. nested
  2. list

> a quote
> over two lines

| a | b |
|---|---|
| 1 | 2 |

```python
def f():
    return "<b>not bold</b>"
```

    indented code

Text right before a rule
---

<div>raw html stays text</div>

A last paragraph, still open"""

CHECK = """(text) => {
  const { BlockRenderer, renderMarkdown } = chatlogMarkdown;
  const live = document.createElement("div");
  const whole = document.createElement("div");
  const renderer = new BlockRenderer();
  const wrong = [];
  for (let i = 1; i <= text.length; i++) {
    renderer.update(live, text.slice(0, i));
    whole.innerHTML = renderMarkdown(text.slice(0, i));
    if (live.innerHTML !== whole.innerHTML) wrong.push(i);
  }
  return { wrong: wrong.slice(0, 5), count: wrong.length, final: live.innerHTML,
           scripted: live.querySelectorAll("img, script, [onerror]").length };
}"""


@pytest.fixture(scope="module")
def markdown() -> str:
    """web/src/markdown.js as one script that defines `chatlogMarkdown`."""
    return bundle("src/markdown.js", "chatlogMarkdown")


def test_every_prefix_of_an_answer_is_drawn_as_the_whole_text_would_be(
    browser: Browser, markdown: str
) -> None:
    result = evaluate(browser, [markdown], CHECK, ANSWER)
    assert result["count"] == 0, f"prefixes drawn differently (first lengths): {result['wrong']}"
    assert result["scripted"] == 0  # the <img onerror> of the text stays text
    assert "<h1>A title</h1>" in result["final"] and "<table>" in result["final"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in result["final"]
