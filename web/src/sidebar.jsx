// The sidebar: new chat, search (hits highlighted; the snippet is escaped text + <mark>),
// the conversations newest first (more load as it scrolls), rename and delete.
import { useEffect, useRef, useState } from "preact/hooks";
import * as API from "./api.js";
import { renderSnippet } from "./markdown.js";
import { Icon } from "./icons.jsx";

function Item({ conv, current, onOpen, onRename, onAskDelete }) {
  const [editing, setEditing] = useState(false);
  const [title, setTitle] = useState(conv.title || "");
  const save = (e) => {
    e.preventDefault();
    setEditing(false);
    if (title.trim() && title.trim() !== conv.title) onRename(conv.id, title.trim());
  };
  if (editing) {
    return (
      <li class="conv editing">
        <form onSubmit={save}>
          <input aria-label="New title" value={title} autofocus onInput={(e) => setTitle(e.currentTarget.value)}
            onKeyDown={(e) => e.key === "Escape" && setEditing(false)} onBlur={save} />
        </form>
      </li>
    );
  }
  return (
    <li class={`conv${conv.id === current ? " current" : ""}`} data-id={conv.id}>
      <button type="button" class="open" aria-current={conv.id === current ? "page" : undefined} onClick={() => onOpen(conv.id)}>
        {conv.title || "New chat"}
      </button>
      <button type="button" class="icon rename" aria-label={`Rename ${conv.title || "chat"}`} title="Rename"
        onClick={() => { setTitle(conv.title || ""); setEditing(true); }}><Icon name="edit" /></button>
      <button type="button" class="icon delete" aria-label={`Delete ${conv.title || "chat"}`} title="Delete"
        onClick={() => onAskDelete(conv)}><Icon name="trash" /></button>
    </li>
  );
}

export function Sidebar({ convs, current, onOpen, onNew, onMore, onRename, onDelete, onSignOut, onError }) {
  const [query, setQuery] = useState("");
  const [hits, setHits] = useState(null);
  const [doomed, setDoomed] = useState(null);
  const dialog = useRef(null);
  const sentinel = useRef(null);

  // more conversations as the list scrolls to its end (the cursor API)
  useEffect(() => {
    if (!sentinel.current || !convs.more) return undefined;
    const seen = new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && onMore());
    seen.observe(sentinel.current);
    return () => seen.disconnect();
  }, [convs.more, convs.cursor]);

  useEffect(() => {
    if (doomed && dialog.current && !dialog.current.open) dialog.current.showModal();
  }, [doomed]);

  const runSearch = async (e) => {
    e.preventDefault();
    if (!query.trim()) { setHits(null); return; }
    try {
      setHits((await API.search(query.trim())).data);
    } catch (err) {
      onError(err);
    }
  };
  const closeDialog = (confirmed) => {
    dialog.current.close();
    if (confirmed && doomed) onDelete(doomed.id);
    setDoomed(null);
  };

  return (
    <nav class="sidebar" aria-label="Conversations">
      <div class="side-top">
        <button type="button" class="new" onClick={onNew}>+ New chat</button>
        <form role="search" onSubmit={runSearch}>
          <label for="search" class="sr-only">Search messages</label>
          <input id="search" type="search" placeholder="Search" value={query}
            onInput={(e) => { setQuery(e.currentTarget.value); if (!e.currentTarget.value) setHits(null); }} />
        </form>
      </div>
      {hits !== null ? (
        <section class="hits" aria-label="Search results">
          <p class="count" role="status">{hits.length ? `${hits.length} result${hits.length > 1 ? "s" : ""}` : "No results"}</p>
          <ul>
            {hits.map((h) => (
              <li key={h.message_id}>
                <button type="button" class="hit" onClick={() => { setHits(null); setQuery(""); onOpen(h.conversation_id); }}>
                  <span class="hit-title">{h.title || "Untitled"}</span>
                  <span class="snippet" dangerouslySetInnerHTML={{ __html: renderSnippet(h.snippet) }} />
                </button>
              </li>
            ))}
          </ul>
        </section>
      ) : (
        <ul class="convs">
          {convs.data.map((c) => (
            <Item key={c.id} conv={c} current={current} onOpen={onOpen} onRename={onRename} onAskDelete={setDoomed} />
          ))}
          {convs.more && <li ref={sentinel} class="more" aria-hidden="true">…</li>}
        </ul>
      )}
      <button type="button" class="signout" onClick={onSignOut}>Sign out</button>
      <dialog ref={dialog} aria-labelledby="del-title" onCancel={() => setDoomed(null)}>
        <h2 id="del-title">Delete this chat?</h2>
        <p>“{doomed ? doomed.title || "New chat" : ""}” and all its messages will be deleted.</p>
        <div class="actions">
          <button type="button" onClick={() => closeDialog(false)}>Cancel</button>
          <button type="button" class="danger" onClick={() => closeDialog(true)}>Delete</button>
        </div>
      </dialog>
    </nav>
  );
}
