// Markdown to safe HTML. Raw HTML in a message is shown as text (escaped), never parsed;
// DOMPurify then removes anything a renderer bug could still let through.
import { Marked } from "marked";
import DOMPurify from "dompurify";

const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);

const md = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html: (token) => escapeHtml(token.text),
    code: ({ text, lang }) => {
      const label = lang ? `<span class="lang">${escapeHtml(lang)}</span>` : "";
      return `<div class="code">${label}<button type="button" class="copy" aria-label="Copy code">Copy</button><pre><code>${escapeHtml(text)}</code></pre></div>`;
    },
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const PURIFY = { USE_PROFILES: { html: true } };

export function renderMarkdown(text) {
  return DOMPurify.sanitize(md.parse(text), PURIFY);
}

// A link reference definition (`[x]: https://…`) can change a block above it: with one in
// the text, every update renders the whole text.
const REF_DEF = /^ {0,3}\[[^\]\n]+\]:/m;

/**
 * An answer being written, drawn into `el` block by block. The text only grows (a new
 * attempt starts over), and a top-level block with another one after it is finished: it is
 * rendered, sanitized and put in the DOM once, and each update re-renders only the open
 * last block. A frame at the end of a long answer then costs what one at its start does,
 * and a screen reader hears the new blocks, not the whole answer again. The DOM is the
 * one `renderMarkdown` gives for the whole text (the same nodes, block after block).
 */
export class BlockRenderer {
  constructor() {
    this.done = ""; // the text of the finished blocks, in the DOM for good
    this.open = []; // the open block's nodes, replaced on each update
  }

  update(el, text) {
    const src = text.replace(/\r\n?/g, "\n"); // as marked's lexer does: its `raw`s add up to src
    const whole = REF_DEF.test(src);
    if (!src.startsWith(this.done) || (whole && this.done)) {
      el.replaceChildren();
      this.done = "";
      this.open = [];
    }
    const tokens = md.lexer(src.slice(this.done.length));
    let open = tokens.length;
    while (open > 0 && tokens[open - 1].type === "space") open--;
    open = whole ? 0 : Math.max(0, open - 1); // the last block, and the blank lines after it
    const finished = tokens.slice(0, open).map((t) => t.raw).join("");
    if (!src.startsWith(this.done + finished)) open = 0; // never freeze what is not the text
    for (const node of this.open) node.remove();
    if (open > 0) {
      el.append(fragment(tokens.slice(0, open)));
      this.done += finished;
    }
    const last = fragment(tokens.slice(open));
    this.open = [...last.childNodes];
    el.append(last);
  }
}

function fragment(tokens) {
  return DOMPurify.sanitize(md.parser(tokens), { ...PURIFY, RETURN_DOM_FRAGMENT: true });
}

// What an answer is made of, one kind per step, blocks in the order marked's lexer tries
// its rules (so a step compiles about one more of its regular expressions), then inline.
const WARM_UP = [
  "\n", "    code", "```\nx\n```", "# h", "---", "- l", "<div>x</div>", "[a]: https://example.com",
  "| a |\n|---|\n| 1 |", "a\n===", "a", "> q", "\\*", "<b>", "[a](https://example.com)", "*a*", "**b**", "`c`",
  "a  \nb", "~~c~~", "<https://example.com>", "https://example.org",
];

/**
 * Renders samples while the page is idle, small ones, as many as an idle period has room
 * for (a callback registered in one runs in the next: one each would take ~1 s). The first use
 * of marked's rules and of DOMPurify compiles them (~20 ms of CPU in one go, measured):
 * without this, a new chat's first answer frame paid for it, a long task right after
 * Enter; done whole while idle, it was one after load. In steps, no step is long.
 */
export function warmUp() {
  const idle = window.requestIdleCallback || ((f) => setTimeout(f, 50));
  const steps = WARM_UP.map((text) => () => new BlockRenderer().update(document.createElement("div"), text));
  steps.push(() => renderMarkdown("a")); // the sanitizer's string output, as stored answers use
  const next = (deadline) => {
    do {
      const step = steps.shift();
      if (!step) return;
      step();
    } while (deadline && deadline.timeRemaining() > 25); // a step takes ~1-12 ms
    idle(next);
  };
  idle(next);
}

/** A search snippet: escaped text with `<mark>` around the hits; nothing else survives. */
export function renderSnippet(html) {
  return DOMPurify.sanitize(html, { ALLOWED_TAGS: ["mark"], ALLOWED_ATTR: [] });
}
