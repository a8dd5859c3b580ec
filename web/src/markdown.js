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

const WARM_UP = "# A\n\nSome *emphasis*, **strong**, `code`, ~~gone~~ and a [link](https://example.com).\n\n" +
  "- one\n- two\n\n1. first\n\n> quoted\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```js\nlet x = 1;\n```\n";

/**
 * Renders a sample once the page is idle. The first render compiles marked's and
 * DOMPurify's code and regular expressions (~16 ms, against ~1 ms after): without this,
 * a new chat's first answer frame paid for it, a long task right after Enter.
 */
export function warmUp() {
  const idle = window.requestIdleCallback || ((f) => setTimeout(f, 500));
  idle(() => {
    renderMarkdown(WARM_UP);
    new BlockRenderer().update(document.createElement("div"), WARM_UP);
  });
}

/** A search snippet: escaped text with `<mark>` around the hits; nothing else survives. */
export function renderSnippet(html) {
  return DOMPurify.sanitize(html, { ALLOWED_TAGS: ["mark"], ALLOWED_ATTR: [] });
}
