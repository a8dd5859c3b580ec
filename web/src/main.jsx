// chatlog's chat page: sign in, the sidebar of conversations, the conversation and its
// live answer. State lives here; the API calls in api.js, the live stream in stream.js.
import { render } from "preact";
import { useEffect, useRef, useState, useCallback } from "preact/hooks";
import * as API from "./api.js";
import { AnswerStream } from "./stream.js";
import { Sidebar } from "./sidebar.jsx";
import { Conversation } from "./conversation.jsx";
import { warmUp } from "./markdown.js";

const RESUME_KEY = "chatlog.resume";
const MODEL_KEY = "chatlog.model";
const TERMINAL = new Set(["finished", "cancelled", "failed"]);

const currentFromHash = () => new URLSearchParams(location.hash.slice(1)).get("c");
const setHash = (cid) => history.replaceState(null, "", cid ? `#c=${encodeURIComponent(cid)}` : location.pathname);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function SignIn({ onSignedIn }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await API.signIn(key.trim());
      onSignedIn();
    } catch (err) {
      setError(err.status === 401 ? "That API key is not valid." : API.plainWords(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <form onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">chatlog</h1>
        <label for="api-key">API key</label>
        <input id="api-key" type="password" autocomplete="current-password" value={key}
          onInput={(e) => setKey(e.currentTarget.value)} required autofocus />
        <button type="submit" disabled={busy || !key.trim()}>Sign in</button>
        {error && <p class="error" role="alert">{error}</p>}
        <p class="hint">Use the key <code>chatlog up</code> printed, or <code>chatlog keys create --user NAME</code>.</p>
      </form>
    </main>
  );
}

function App() {
  const [signedIn, setSignedIn] = useState(null); // null: not known yet
  const [convs, setConvs] = useState({ data: [], cursor: null, more: false });
  const [current, setCurrent] = useState(currentFromHash());
  const [messages, setMessages] = useState([]);
  const [live, setLive] = useState(null); // {rid, text, state, prompt?}
  const [notice, setNotice] = useState(null);
  const [modelList, setModelList] = useState([]);
  const [model, setModel] = useState(localStorage.getItem(MODEL_KEY) || "");
  const [drawer, setDrawer] = useState(false);
  const stream = useRef(null);
  const created = useRef(null); // the conversation this page just started
  const currentRef = useRef(current);
  currentRef.current = current;

  const fail = useCallback((err) => {
    if (err instanceof API.ApiError && err.status === 401) {
      setSignedIn(false);
      return;
    }
    setNotice(API.plainWords(err));
  }, []);

  const loadConversations = useCallback(async (more) => {
    try {
      const page = await API.listConversations(more ? convs.cursor : null);
      setSignedIn(true);
      setConvs((old) => {
        const known = more ? old.data : old.data.filter((c) => c.pending);
        const ids = new Set(page.data.map((c) => c.id));
        const merged = more ? [...known, ...page.data.filter((c) => !known.some((k) => k.id === c.id))]
          : [...known.filter((c) => !ids.has(c.id)), ...page.data];
        return { data: merged, cursor: page.next_cursor, more: page.has_more };
      });
    } catch (err) {
      if (err instanceof API.ApiError && err.status === 401) setSignedIn(false);
      else fail(err);
    }
  }, [convs.cursor, fail]);

  /** The current branch, oldest first; `until` waits (bounded) for an answer to be stored. */
  const loadMessages = useCallback(async (cid, until) => {
    for (let i = 0; i < 40; i++) {
      try {
        const page = await API.branchMessages(cid);
        if (currentRef.current !== cid) return null;
        const msgs = page.data.slice().reverse();
        const ok = !until || msgs.some((m) => m.request_id === until && m.role === "assistant" && m.status !== "streaming" && m.status !== "queued");
        if (ok || i === 39) {
          setMessages(msgs);
          return msgs;
        }
      } catch (err) {
        if (err instanceof API.ApiError && err.status === 404 && until) {
          await sleep(250); // a new conversation's first rows are not projected yet
          continue;
        }
        fail(err);
        return null;
      }
      await sleep(250);
    }
    return null;
  }, [fail]);

  const follow = useCallback((rid, cid, from) => {
    if (stream.current) stream.current.close();
    setLive({ rid, cid, text: from.text || "", state: "streaming" });
    let pending = from.text || "";
    let frame = 0;
    stream.current = new AnswerStream(rid, from, {
      // at most one render a frame, however fast chunks come (no long main-thread tasks)
      onText: (text) => {
        pending = text;
        if (!frame) {
          frame = requestAnimationFrame(() => {
            frame = 0;
            setLive((l) => (l && l.rid === rid ? { ...l, text: pending } : l));
          });
        }
      },
      onState: (state) => setLive((l) => (l && l.rid === rid ? { ...l, state } : l)),
      onDone: async (data) => {
        stream.current = null;
        cancelAnimationFrame(frame);
        setLive((l) => (l && l.rid === rid ? { ...l, text: pending } : l));
        setLive((l) => (l && l.rid === rid ? { ...l, state: data.finish_reason === "cancelled" ? "stopped" : "done" } : l));
        await loadMessages(cid, rid);
        setLive((l) => (l && l.rid === rid ? null : l));
        loadConversations(false);
      },
      onFail: async (message) => {
        stream.current = null;
        setLive((l) => (l && l.rid === rid ? { ...l, state: "failed", error: message } : l));
      },
    });
  }, [loadMessages, loadConversations]);

  // A reload keeps where the live answer was: the next page resumes after its last event.
  useEffect(() => {
    const save = () => {
      if (stream.current) sessionStorage.setItem(RESUME_KEY, JSON.stringify({ ...stream.current.position(), cid: currentRef.current }));
    };
    addEventListener("pagehide", save);
    return () => removeEventListener("pagehide", save);
  }, []);

  useEffect(() => {
    loadConversations(false);
    const onHash = () => setCurrent(currentFromHash());
    addEventListener("hashchange", onHash);
    return () => removeEventListener("hashchange", onHash);
  }, []);

  useEffect(() => {
    if (!signedIn) return;
    API.models().then((m) => {
      const ids = m.data.map((x) => x.id);
      setModelList(ids);
      setModel((cur) => (ids.includes(cur) ? cur : ids[0] || ""));
    }, fail);
  }, [signedIn]);

  // Opening a conversation: its branch, and its answer still being written, if any.
  useEffect(() => {
    setHash(current);
    if (!signedIn) return;
    if (stream.current && (!live || live.cid !== current)) {
      stream.current.close();
      stream.current = null;
      setLive(null);
    }
    if (!current) {
      setMessages([]);
      return;
    }
    if (created.current === current) { // our own new chat: not projected yet
      created.current = null;
      return;
    }
    let saved = null;
    try {
      saved = JSON.parse(sessionStorage.getItem(RESUME_KEY) || "null");
    } catch { /* nothing to resume */ }
    sessionStorage.removeItem(RESUME_KEY);
    loadMessages(current).then((msgs) => {
      if (!msgs || stream.current) return;
      const answer = (rid) => msgs.find((m) => m.role === "assistant" && m.request_id === rid);
      // the answer this tab was following before a reload, even if not projected yet
      if (saved && saved.cid === current) {
        const known = answer(saved.rid);
        if (!known || !TERMINAL.has(known.status)) {
          follow(saved.rid, current, saved);
          return;
        }
      }
      const open = msgs.find((m) => m.role === "assistant" && !TERMINAL.has(m.status));
      if (open) follow(open.request_id, current, {});
    });
  }, [current, signedIn]);

  useEffect(() => { if (model) localStorage.setItem(MODEL_KEY, model); }, [model]);

  const accepted = (acc, cid, userText) => {
    if (userText !== undefined && !convs.data.some((c) => c.id === acc.conversation_id)) {
      // a new chat is titled by its first message, as people expect from a chat service
      const title = userText.split(/\s+/).join(" ").trim().slice(0, 60);
      setConvs((old) => ({ ...old, data: [{ id: acc.conversation_id, title, pending: true }, ...old.data] }));
      API.rename(acc.conversation_id, title).catch(() => {});
    }
    if (currentRef.current !== acc.conversation_id) {
      created.current = acc.conversation_id;
      currentRef.current = acc.conversation_id;
      setCurrent(acc.conversation_id);
    }
    follow(acc.id, acc.conversation_id, {});
  };

  /** The picked model; before /v1/models has answered, its first. */
  const pickedModel = async () => {
    if (model) return model;
    const ids = (await API.models()).data.map((x) => x.id);
    return ids[0] || "";
  };

  const onSend = async (text) => {
    setNotice(null);
    const cid = current;
    setMessages((m) => [...m, { id: `local-${Date.now()}`, role: "user", content: text, local: true }]);
    try {
      const acc = await API.send(await pickedModel(), text, cid);
      accepted(acc, cid, text);
      return true;
    } catch (err) {
      setMessages((m) => m.filter((x) => !x.local));
      fail(err);
      return false;
    }
  };
  const onStop = async () => {
    if (!live) return;
    try { await API.cancel(live.rid); } catch (err) { fail(err); }
  };
  const onRegenerate = async (rid) => {
    setNotice(null);
    try {
      const acc = await API.regenerate(current, rid, model);
      setMessages((m) => m.filter((x) => !(x.role === "assistant" && x.request_id === rid)));
      accepted(acc, current);
    } catch (err) { fail(err); }
  };
  const onEdit = async (rid, content) => {
    setNotice(null);
    try {
      const acc = await API.edit(current, rid, content, model);
      setMessages((m) => {
        const at = m.findIndex((x) => x.role === "user" && x.request_id === rid);
        return [...(at >= 0 ? m.slice(0, at) : m), { id: `local-${Date.now()}`, role: "user", content, local: true }];
      });
      accepted(acc, current);
    } catch (err) { fail(err); }
  };
  const onSwitch = async (rid) => {
    try {
      await API.switchBranch(current, rid);
      for (let i = 0; i < 40; i++) {
        const msgs = await loadMessages(current);
        if (!msgs || msgs.some((m) => m.request_id === rid)) break;
        await sleep(250);
      }
    } catch (err) { fail(err); }
  };
  const onRename = async (cid, title) => {
    try {
      const r = await API.rename(cid, title);
      setConvs((old) => ({ ...old, data: old.data.map((c) => (c.id === cid ? { ...c, title: r.title } : c)) }));
    } catch (err) { fail(err); }
  };
  const onDelete = async (cid) => {
    try {
      await API.remove(cid);
      setConvs((old) => ({ ...old, data: old.data.filter((c) => c.id !== cid) }));
      if (cid === current) setCurrent(null);
    } catch (err) { fail(err); }
  };
  const onSignOut = async () => {
    if (stream.current) stream.current.close();
    stream.current = null;
    try { await API.signOut(); } catch { /* the cookie may be gone already */ }
    setLive(null);
    setMessages([]);
    setConvs({ data: [], cursor: null, more: false });
    setCurrent(null);
    setSignedIn(false);
  };

  if (signedIn === null) return <p class="loading" role="status">Loading…</p>;
  if (!signedIn) return <SignIn onSignedIn={() => loadConversations(false)} />;
  const title = (convs.data.find((c) => c.id === current) || {}).title;
  return (
    <div class={`app${drawer ? " drawer-open" : ""}`}>
      <Sidebar convs={convs} current={current} onOpen={(cid) => { setDrawer(false); setCurrent(cid); }}
        onNew={() => { setDrawer(false); setCurrent(null); }} onMore={() => loadConversations(true)}
        onRename={onRename} onDelete={onDelete} onSignOut={onSignOut} onError={fail} />
      <Conversation title={title} messages={messages} live={live} notice={notice}
        models={modelList} model={model} onModel={setModel}
        onSend={onSend} onStop={onStop} onRegenerate={onRegenerate} onEdit={onEdit} onSwitch={onSwitch}
        onDismiss={() => setNotice(null)} onMenu={() => setDrawer(!drawer)} />
    </div>
  );
}

render(<App />, document.getElementById("app"));
warmUp();
