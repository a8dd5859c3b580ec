// The API as the page uses it: same origin (the gateway), the session cookie, and errors
// turned into plain words (429 with its retry time, 502/503 outages).

export class ApiError extends Error {
  constructor(status, message, code, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** What a person should read for a failed call. */
export function plainWords(err) {
  if (!(err instanceof ApiError)) return "The server cannot be reached. Check the connection and try again.";
  if (err.status === 429 && err.code === "too_many_concurrent_generations") {
    return "Too many answers are being written at once: wait for one to finish, then try again.";
  }
  if (err.status === 429) {
    const s = err.retryAfter ? ` in ${err.retryAfter} second${err.retryAfter === "1" ? "" : "s"}` : " shortly";
    return `Too many requests: please wait and try again${s}.`;
  }
  if (err.status === 502 || err.status === 504) return "The server is unreachable right now. Try again in a moment.";
  if (err.status === 503) return `The service is unavailable right now (${err.message}) Try again shortly.`;
  return err.message;
}

export async function api(method, path, body) {
  let resp;
  try {
    resp = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "The server cannot be reached.", "network", null);
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(resp.status, e.message || `HTTP ${resp.status}`, e.code, resp.headers.get("Retry-After"));
  }
  return data;
}

export const signIn = (apiKey) => api("POST", "/v1/sessions", { api_key: apiKey });
export const signOut = () => api("DELETE", "/v1/sessions");
export const listConversations = (cursor) =>
  api("GET", `/v1/conversations?limit=30${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
export const branchMessages = (cid) => api("GET", `/v1/conversations/${encodeURIComponent(cid)}/messages?limit=100`);
export const models = () => api("GET", "/v1/models");
export const search = (query) => api("POST", "/v1/conversations/search", { query, limit: 20 });
export const rename = (cid, title) => api("PATCH", `/v1/conversations/${encodeURIComponent(cid)}`, { title });
export const remove = (cid) => api("DELETE", `/v1/conversations/${encodeURIComponent(cid)}`);
export const cancel = (rid) => api("POST", `/v1/chat/completions/${encodeURIComponent(rid)}/cancel`);
export const completion = (rid) => api("GET", `/v1/chat/completions/${encodeURIComponent(rid)}`);
export const switchBranch = (cid, rid) =>
  api("POST", `/v1/conversations/${encodeURIComponent(cid)}/branch`, { request_id: rid });

/** Send a prompt: 202 at once (Prefer: respond-async); the answer comes from its stream. */
export async function send(model, content, conversationId) {
  const body = { model, messages: [{ role: "user", content }] };
  if (conversationId) body.conversation_id = conversationId;
  return apiAsync("/v1/chat/completions", body);
}
export const regenerate = (cid, rid, model) =>
  apiAsync(`/v1/conversations/${encodeURIComponent(cid)}/messages/${encodeURIComponent(rid)}/regenerate`, model ? { model } : {});
export const edit = (cid, rid, content, model) =>
  apiAsync(`/v1/conversations/${encodeURIComponent(cid)}/messages/${encodeURIComponent(rid)}/edit`, model ? { content, model } : { content });

async function apiAsync(path, body) {
  let resp;
  try {
    resp = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Prefer: "respond-async" },
      body: JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "The server cannot be reached.", "network", null);
  }
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(resp.status, e.message || `HTTP ${resp.status}`, e.code, resp.headers.get("Retry-After"));
  }
  return data;
}
