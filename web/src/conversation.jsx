// The conversation: its current branch, the live answer, the composer. User text is shown
// as text; answers as sanitized markdown (markdown.js). The live answer is an aria-live
// region, so a screen reader hears it as it is written.
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import { BlockRenderer, renderMarkdown } from "./markdown.js";
import { Icon } from "./icons.jsx";

function Markdown({ text }) {
  const html = useMemo(() => renderMarkdown(text), [text]);
  return <div class="md" dangerouslySetInnerHTML={{ __html: html }} />;
}

/** The answer being written: only its open last block is redrawn (BlockRenderer). */
function LiveMarkdown({ text }) {
  const el = useRef(null);
  const blocks = useRef(null);
  useLayoutEffect(() => {
    if (!blocks.current) blocks.current = new BlockRenderer();
    blocks.current.update(el.current, text);
  }, [text]);
  return <div class="md" ref={el} />;
}

function Switcher({ msg, onSwitch }) {
  if (!msg.sibling_count || msg.sibling_count < 2) return null;
  const i = msg.sibling_index;
  const ids = msg.sibling_request_ids;
  return (
    <span class="switcher" role="group" aria-label="Versions">
      <button type="button" class="icon prev" aria-label="Previous version" disabled={i <= 0} onClick={() => onSwitch(ids[i - 1])}><Icon name="prev" /></button>
      <span class="pos">{i + 1} / {msg.sibling_count}</span>
      <button type="button" class="icon next" aria-label="Next version" disabled={i >= ids.length - 1} onClick={() => onSwitch(ids[i + 1])}><Icon name="next" /></button>
    </span>
  );
}

function UserMessage({ msg, busy, onEdit, onSwitch }) {
  const [editing, setEditing] = useState(false);
  const [text, setText] = useState(msg.content);
  if (editing) {
    return (
      <article class="msg user editing" aria-label="Your message">
        <label class="sr-only" for={`edit-${msg.id}`}>Edit message</label>
        <textarea id={`edit-${msg.id}`} value={text} autofocus onInput={(e) => setText(e.currentTarget.value)} rows={3} />
        <div class="actions">
          <button type="button" onClick={() => setEditing(false)}>Cancel</button>
          <button type="button" class="primary" disabled={!text.trim() || busy}
            onClick={() => { setEditing(false); onEdit(msg.request_id, text); }}>Save &amp; send</button>
        </div>
      </article>
    );
  }
  return (
    <article class="msg user" aria-label="Your message">
      <div class="text">{msg.content}</div>
      <div class="tools">
        <Switcher msg={msg} onSwitch={onSwitch} />
        {!msg.local && msg.request_id && (
          <button type="button" class="icon edit" aria-label="Edit message" title="Edit" disabled={busy}
            onClick={() => { setText(msg.content); setEditing(true); }}><Icon name="edit" /></button>
        )}
      </div>
    </article>
  );
}

const STATE_WORDS = {
  reconnecting: "Reconnecting…",
  stopped: "Stopped.",
  failed: "The answer failed.",
};

function AssistantMessage({ msg, live, busy, onRegenerate, onSwitch }) {
  const text = live ? live.text : msg.content;
  const state = live ? live.state : msg.status === "cancelled" ? "stopped" : msg.status === "failed" ? "failed" : null;
  const writing = live && (live.state === "streaming" || live.state === "reconnecting");
  return (
    <article class={`msg assistant${writing ? " writing" : ""}`} aria-label="Answer" data-request-id={msg.request_id}
      data-status={live ? live.state : msg.status}
      aria-live={live ? "polite" : undefined} aria-busy={writing ? "true" : undefined}>
      {text ? (live ? <LiveMarkdown text={text} /> : <Markdown text={text} />) : writing && <p class="thinking">…</p>}
      {state && STATE_WORDS[state] && (
        <p class={`state ${state}`} role="status">{live && live.error ? live.error : STATE_WORDS[state]}</p>
      )}
      {!writing && msg.request_id && (
        <div class="tools">
          <Switcher msg={msg} onSwitch={onSwitch} />
          <button type="button" class="icon regenerate" aria-label="Regenerate answer" title="Regenerate" disabled={busy}
            onClick={() => onRegenerate(msg.request_id)}><Icon name="regenerate" /></button>
        </div>
      )}
    </article>
  );
}

function Composer({ busy, onSend, onStop }) {
  const [text, setText] = useState("");
  const box = useRef(null);
  const submit = async () => {
    const t = text.trim();
    if (!t || busy) return;
    setText("");
    if (!(await onSend(t))) setText(t);
  };
  return (
    <form class="composer" onSubmit={(e) => { e.preventDefault(); submit(); }}>
      <label for="prompt" class="sr-only">Message</label>
      <textarea id="prompt" ref={box} rows={1} placeholder="Message chatlog (Enter to send, Shift+Enter for a new line)"
        value={text} onInput={(e) => setText(e.currentTarget.value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            submit();
          }
        }} />
      {busy ? (
        <button type="button" class="stop" onClick={onStop} aria-label="Stop answering">Stop</button>
      ) : (
        <button type="submit" class="send" disabled={!text.trim()} aria-label="Send">Send</button>
      )}
    </form>
  );
}

async function copyCode(e) {
  const button = e.target.closest("button.copy");
  if (!button) return;
  const code = button.parentElement.querySelector("code");
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

export function Conversation(props) {
  const { title, messages, live, notice, models, model, onModel, onSend, onStop, onRegenerate, onEdit, onSwitch, onDismiss, onMenu } = props;
  const end = useRef(null);
  const busy = Boolean(live && (live.state === "streaming" || live.state === "reconnecting"));
  useEffect(() => { end.current && end.current.scrollIntoView({ block: "end" }); }, [messages.length, live && live.text.length]);
  const shown = messages.filter((m) => !(live && m.role === "assistant" && m.request_id === live.rid));
  return (
    <main class="chat">
      <header>
        <button type="button" class="icon menu" aria-label="Show conversations" onClick={onMenu}><Icon name="menu" /></button>
        <h1>{title || "New chat"}</h1>
        <label class="model">
          <span class="sr-only">Model</span>
          <select value={model} onChange={(e) => onModel(e.currentTarget.value)} aria-label="Model">
            {models.map((m) => <option key={m} value={m}>{m}</option>)}
          </select>
        </label>
      </header>
      {notice && (
        <div class="notice" role="alert">
          <span>{notice}</span>
          <button type="button" class="icon" aria-label="Dismiss" onClick={onDismiss}><Icon name="close" /></button>
        </div>
      )}
      <section class="messages" aria-label="Messages" onClick={copyCode}>
        {shown.length === 0 && !live && <p class="empty">Ask anything.</p>}
        {shown.map((m) => (m.role === "user"
          ? <UserMessage key={m.id} msg={m} busy={busy} onEdit={onEdit} onSwitch={onSwitch} />
          : <AssistantMessage key={m.id} msg={m} busy={busy} onRegenerate={onRegenerate} onSwitch={onSwitch} />))}
        {live && <AssistantMessage key={live.rid} msg={{ request_id: live.rid, ...(messages.find((m) => m.request_id === live.rid && m.role === "assistant") || {}) }} live={live} busy={busy} onRegenerate={onRegenerate} onSwitch={onSwitch} />}
        <div ref={end} />
      </section>
      <Composer busy={busy} onSend={onSend} onStop={onStop} />
    </main>
  );
}
