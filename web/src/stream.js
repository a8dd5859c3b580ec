// One answer's live stream: the browser's own EventSource, which reconnects by itself with
// Last-Event-ID after a dropped connection; after an HTTP error (the gateway's 502 while the
// query API is away) EventSource gives up, so this reopens it with `starting_after` from
// the last event it got. Either way every chunk arrives exactly once (ids `<attempt>:<seq>`).
import { completion, ApiError } from "./api.js";

const RETRY_MS = [250, 500, 1000, 2000, 3000];

export class AnswerStream {
  /**
   * @param {string} requestId
   * @param {{text?: string, lastId?: string|null}} from where a previous page left it
   * @param {{onText(text: string): void, onState(state: string): void,
   *          onDone(data: object): void, onFail(message: string): void}} on
   */
  constructor(requestId, from, on) {
    this.rid = requestId;
    this.text = from.text || "";
    this.lastId = from.lastId || null;
    this.on = on;
    this.es = null;
    this.closed = false;
    this.failures = 0;
    this.timer = null;
    this.open();
  }

  url() {
    const base = `/v1/chat/completions/${encodeURIComponent(this.rid)}/stream`;
    // after a reset (`<attempt>:-1`, no chunk of the new attempt yet) there is no event to
    // resume after: the stream from its start brings that attempt whole
    const resumable = this.lastId && !this.lastId.endsWith(":-1");
    return resumable ? `${base}?starting_after=${encodeURIComponent(this.lastId)}` : base;
  }

  open() {
    const es = new EventSource(this.url(), { withCredentials: true });
    this.es = es;
    es.addEventListener("open", () => {
      this.failures = 0;
      this.on.onState("streaming");
    });
    es.addEventListener("chunk", (e) => {
      const d = JSON.parse(e.data);
      if (!this.after(d.attempt, d.seq)) return; // never twice, whatever the transport did
      this.lastId = e.lastEventId || `${d.attempt}:${d.seq}`;
      this.text += d.text;
      this.on.onText(this.text);
    });
    es.addEventListener("reset", (e) => {
      // a new attempt of the generation starts over: its text replaces the old one
      const d = JSON.parse(e.data);
      this.lastId = `${d.attempt}:-1`;
      this.text = "";
      this.on.onText(this.text);
    });
    es.addEventListener("done", (e) => {
      this.close();
      this.on.onDone(JSON.parse(e.data));
    });
    es.addEventListener("error", (e) => {
      if (e.data !== undefined) {
        // the server's own `event: error` frame: the generation failed
        this.close();
        let msg = "The answer failed.";
        try {
          msg = JSON.parse(e.data).error.message || msg;
        } catch {
          /* keep the plain message */
        }
        this.on.onFail(msg);
        return;
      }
      if (this.closed) return;
      this.on.onState("reconnecting");
      if (es.readyState === EventSource.CLOSED) this.retry();
      // CONNECTING: the browser retries by itself, with Last-Event-ID
    });
  }

  /** Whether chunk (attempt, seq) comes after the last one shown. */
  after(attempt, seq) {
    if (!this.lastId) return true;
    const [a, s] = this.lastId.split(":").map(Number);
    return attempt > a || (attempt === a && seq > s);
  }

  retry() {
    if (this.closed || this.timer) return;
    const wait = RETRY_MS[Math.min(this.failures, RETRY_MS.length - 1)];
    this.failures += 1;
    this.timer = setTimeout(async () => {
      this.timer = null;
      if (this.closed) return;
      try {
        await completion(this.rid); // is it reachable, and still ours?
      } catch (err) {
        if (err instanceof ApiError && (err.status === 404 || err.status === 401)) {
          this.close();
          this.on.onFail(err.status === 401 ? "Signed out." : "This answer no longer exists.");
          return;
        }
        this.retry(); // still away
        return;
      }
      this.open();
    }, wait);
  }

  /** Where this stream is, for the next page to resume from (a reload). */
  position() {
    return { rid: this.rid, text: this.text, lastId: this.lastId };
  }

  close() {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.es) this.es.close();
  }
}
