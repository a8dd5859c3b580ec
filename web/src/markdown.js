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

export function renderMarkdown(text) {
  return DOMPurify.sanitize(md.parse(text), { USE_PROFILES: { html: true } });
}

/** A search snippet: escaped text with `<mark>` around the hits; nothing else survives. */
export function renderSnippet(html) {
  return DOMPurify.sanitize(html, { ALLOWED_TAGS: ["mark"], ALLOWED_ATTR: [] });
}
