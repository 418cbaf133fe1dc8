// The connection to the gateway: hello, resume, reconnect with backoff, and an outbox.
//
// * One WebSocket to the same origin's /ws.  The first frame is hello with the token and, after a
//   drop, a resume map {conversation_id: {seq, epoch}} so the server replays exactly what we missed.
// * A dropped socket reconnects by itself: exponential backoff with jitter (half fixed, half random),
//   reset once a welcome arrives.  Closes that mean "do not come back" (4401 bad token, 4403 suspended)
//   stop the loop.
// * Chat messages go through an outbox.  Each gets a client_id (crypto.randomUUID) when typed and stays
//   in the outbox until the server acks it.  The outbox sends one message at a time, oldest first, and
//   the next only after the ack, so a refusal (rate limit, store briefly down) can never reorder what a
//   person wrote; after every (re)connection it starts again from the oldest un-acked message.  The
//   server stores a client_id at most once, so a message resent after a lost ack appears exactly once.
// * A session does not outlive its token.  Ahead of the token's exp the server sends token_expiring; we
//   ask the sign-in source for a fresh token (the `refresh` option: async () => token, or null when there
//   is none) and answer {type: "reauth", token}.  Without one the server closes 4401 "token expired" at
//   exp; with a `refresh` we fetch a token then and reconnect (and resume), otherwise we are signed out.

import { t } from "./i18n.js";

const FATAL_CLOSES = new Map([
  [4401, "signed_out"],
  [4403, "suspended"],
]);
// errors after which resending the same message can succeed
const RETRYABLE = new Set(["rate_limited", "unavailable", "internal"]);

export function defaultUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws`;
}

/** Delay before reconnect attempt n (0-based): min(cap, base * 2^n), half of it random. */
export function backoffDelay(attempt, { baseMs = 500, capMs = 10000 } = {}, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
  return ceiling / 2 + random() * (ceiling / 2);
}

export class Connection {
  constructor(token, { url = defaultUrl(), backoff = {}, heartbeatMs = 15000, silenceMs = 40000, refresh = null, locale = null } = {}) {
    this.token = token;
    this.refresh = refresh;       // async () => a fresh token for the same user and role, or null
    this.locale = locale;         // the page's language: the server picks crisis lines by it
    this.renewing = null;         // the refresh in progress (one at a time)
    this.expiredCloses = 0;       // "token expired" closes since the last welcome
    this.url = url;
    this.backoff = backoff;
    this.heartbeatMs = heartbeatMs;
    this.silenceMs = silenceMs;
    this.state = "idle";          // idle | connecting | open | reconnecting | closed
    this.user = null;
    this.attempt = 0;
    this.ws = null;
    this.listeners = new Map();   // type -> Set(fn); "*" gets every frame, "state" gets state changes
    this.resume = new Map();      // conversation_id -> {seq, epoch}
    this.outbox = new Map();      // client_id -> {client_id, conversation_id, text, state}, oldest first
    this.inflight = null;         // the client_id sent and not yet acked (at most one)
    this.ackTimeoutMs = 10000;    // no ack by then (lost frame, server bug): send the same message again
    this.timers = { retry: null, beat: null, pump: null, ack: null };
    this.lastHeard = 0;
    window.addEventListener("online", () => { if (this.state === "reconnecting") this.connectNow(); });
  }

  // ---- events --------------------------------------------------------------------------
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  emit(type, payload) {
    for (const key of [type, "*"]) {
      for (const fn of [...(this.listeners.get(key) || [])]) {
        try { fn(payload); } catch (err) { console.error(err); }
      }
    }
  }

  setState(state, detail = {}) {
    this.state = state;
    for (const fn of [...(this.listeners.get("state") || [])]) fn({ state, ...detail });
  }

  // ---- lifecycle -------------------------------------------------------------------------
  start() {
    this.connectNow();
  }

  stop() {
    this.setState("closed", { reason: "signed_out_by_user" });
    clearTimeout(this.timers.retry);
    clearInterval(this.timers.beat);
    if (this.ws) this.ws.close(1000, "bye");
  }

  connectNow() {
    clearTimeout(this.timers.retry);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
    this.setState(this.attempt === 0 && this.state === "idle" ? "connecting" : "reconnecting",
      { attempt: this.attempt });
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.welcomed = false;
    ws.onopen = () => {
      const resume = {};
      for (const [cid, pos] of this.resume) resume[cid] = { seq: pos.seq, epoch: pos.epoch };
      ws.send(JSON.stringify({ type: "hello", token: this.token, resume, ...(this.locale ? { locale: this.locale } : {}) }));
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => this.closed(ws, event);
    ws.onerror = () => {};        // onclose follows and decides
  }

  closed(ws, event) {
    if (ws !== this.ws) return;
    clearInterval(this.timers.beat);
    this.inflight = null;
    clearTimeout(this.timers.ack);
    for (const item of this.outbox.values()) this.setItem(item, "queued");
    if (this.state === "closed") return;
    if (event.code === 4401 && event.reason === "token expired" && this.refresh && this.expiredCloses < 2) {
      // the token ran out before a reauth got through: fetch a fresh one and come back (and resume)
      this.expiredCloses += 1;
      this.setState("reconnecting", { attempt: this.attempt, code: event.code });
      this.renewToken().then((token) => {
        if (this.state === "closed" || ws !== this.ws) return;
        if (token) this.connectNow();
        else this.setState("closed", { reason: "signed_out", message: event.reason });
      });
      return;
    }
    const fatal = FATAL_CLOSES.get(event.code);
    if (fatal) {
      this.setState("closed", { reason: fatal, message: event.reason });
      return;
    }
    const delay = backoffDelay(this.attempt, this.backoff);
    this.attempt += 1;
    this.setState("reconnecting", { attempt: this.attempt, retryInMs: delay, code: event.code });
    this.timers.retry = setTimeout(() => this.connectNow(), delay);
  }

  /** Close the socket as if the network dropped it (used by the heartbeat when the line goes silent). */
  drop() {
    if (this.ws) this.ws.close(4000, "client gave up waiting");
  }

  heartbeat() {
    clearInterval(this.timers.beat);
    this.timers.beat = setInterval(() => {
      if (Date.now() - this.lastHeard > this.silenceMs) this.drop();
      else this.sendRaw({ type: "ping" });
    }, this.heartbeatMs);
  }

  // ---- receiving -------------------------------------------------------------------------
  receive(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    if (!frame || typeof frame.type !== "string") return;
    this.lastHeard = Date.now();
    switch (frame.type) {
      case "welcome":
        this.user = frame.user;
        this.attempt = 0;
        this.expiredCloses = 0;
        this.welcomed = true;
        for (const conv of [...(frame.conversations || []), ...(frame.groups || [])]) {
          if (!this.resume.has(conv.conversation_id)) {
            this.resume.set(conv.conversation_id, { seq: conv.last_seq || 0, epoch: conv.epoch });
          }
        }
        this.setState("open", { user: frame.user });
        this.emit("welcome", frame);
        this.heartbeat();
        for (const item of this.outbox.values()) this.setItem(item, "sending");
        this.pump();
        return;
      case "matched":
        if (!this.resume.has(frame.conversation_id)) {
          this.resume.set(frame.conversation_id, { seq: 0, epoch: frame.epoch });
        }
        break;
      case "joined":
        // a group is a conversation: resume it from the seq it was joined at (the server starts there)
        if (frame.conversation_id && !this.resume.has(frame.conversation_id)) {
          this.resume.set(frame.conversation_id, { seq: frame.seq || 0, epoch: frame.epoch });
        }
        break;
      case "left":
      case "removed":
        if (!frame.waitlisted && frame.group_id) {
          this.resume.delete(frame.group_id);
          this.dropOutbox(frame.group_id, "conversation_ended");
        }
        break;
      case "message": {
        const pos = this.resume.get(frame.conversation_id);
        if (pos && frame.seq > pos.seq) { pos.seq = frame.seq; pos.epoch = frame.epoch || pos.epoch; }
        break;
      }
      case "token_expiring":
        this.reauth(this.ws, frame.in_s);
        break;
      case "ended":
        this.resume.delete(frame.conversation_id);
        this.dropOutbox(frame.conversation_id, "conversation_ended");
        break;
      case "ack": {
        const item = this.outbox.get(frame.client_id);
        if (item) {
          this.outbox.delete(frame.client_id);
          this.setItem(item, "acked", { seq: frame.seq, ts: frame.ts });
          this.settled(frame.client_id);
        }
        break;
      }
      case "error":
        if (frame.code === "recovery_failed" && frame.conversation_id) {
          const pos = this.resume.get(frame.conversation_id);
          if (pos) pos.seq = 0;
        }
        if (frame.client_id && this.outbox.has(frame.client_id)) this.sendFailed(frame);
        break;
      default:
        break;
    }
    this.emit(frame.type, frame);
  }

  // ---- token refresh ----------------------------------------------------------------------
  /** A fresh token from the sign-in source (null when there is none or it failed); one call at a time. */
  renewToken() {
    if (!this.refresh) return Promise.resolve(null);
    if (!this.renewing) {
      this.renewing = (async () => {
        try {
          const token = await this.refresh();
          if (typeof token !== "string" || !token) return null;
          this.token = token;
          this.emit("token", token);
          return token;
        } catch {
          return null;
        } finally {
          this.renewing = null;
        }
      })();
    }
    return this.renewing;
  }

  /** Answer token_expiring on this socket with a reauth; if the sign-in source fails, try again while
   *  there is time (the server closes at exp, and we come back with a fresh token then). */
  async reauth(ws, inS) {
    const startedAt = Date.now();
    const token = await this.renewToken();
    if (ws !== this.ws || ws.readyState !== WebSocket.OPEN) return;
    if (token) {
      this.sendRaw({ type: "reauth", token });
      return;
    }
    const left = inS - (Date.now() - startedAt) / 1000;
    if (this.refresh && left > 2) {
      const wait = Math.min(5, left / 2);
      setTimeout(() => this.reauth(ws, left - wait), wait * 1000);
    }
  }

  /** Stop resuming a conversation (it ended; nothing more will be written to it). */
  forget(conversationId) {
    this.resume.delete(conversationId);
  }

  // ---- sending ---------------------------------------------------------------------------
  get online() {
    return this.state === "open" && this.welcomed && this.ws?.readyState === WebSocket.OPEN;
  }

  sendRaw(frame) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Send a control frame now; false (nothing sent) while offline. */
  send(frame) {
    return this.online && this.sendRaw(frame);
  }

  /** Queue a chat message: shown at once, sent when its turn comes, resent after reconnects until acked. */
  sendMessage(conversationId, text) {
    const item = { client_id: crypto.randomUUID(), conversation_id: conversationId, text, state: this.online ? "sending" : "queued" };
    this.outbox.set(item.client_id, item);
    this.emit("outbox", { ...item });
    this.pump();
    return item.client_id;
  }

  /** Send the oldest un-acked message if none is in flight. */
  pump() {
    clearTimeout(this.timers.pump);
    if (this.inflight || !this.online) return;
    const item = this.outbox.values().next().value;
    if (!item) return;
    this.inflight = item.client_id;
    this.sendRaw({ type: "send", conversation_id: item.conversation_id, client_id: item.client_id, text: item.text });
    clearTimeout(this.timers.ack);
    this.timers.ack = setTimeout(() => { if (this.inflight === item.client_id) { this.inflight = null; this.pump(); } }, this.ackTimeoutMs);
  }

  /** The in-flight message got its answer: move on to the next one, now or after a pause. */
  settled(clientId, pauseMs = 0) {
    if (this.inflight !== clientId) return;
    this.inflight = null;
    clearTimeout(this.timers.ack);
    if (pauseMs) this.timers.pump = setTimeout(() => this.pump(), pauseMs);
    else this.pump();
  }

  setItem(item, state, extra = {}) {
    item.state = state;
    this.emit("outbox", { ...item, ...extra });
  }

  sendFailed(frame) {
    const item = this.outbox.get(frame.client_id);
    if (RETRYABLE.has(frame.code)) {
      // keep it first in line and try again after the pause the server asked for (or a short backoff)
      this.setItem(item, "sending", { note: frame.message });
      const wait = frame.retry_after_s ? frame.retry_after_s * 1000 : backoffDelay(2, this.backoff);
      this.settled(frame.client_id, wait + Math.random() * 250);
      return;
    }
    this.outbox.delete(frame.client_id);
    this.setItem(item, "failed", { code: frame.code, note: frame.message, retry_after_s: frame.retry_after_s });
    this.settled(frame.client_id);
  }

  dropOutbox(conversationId, code) {
    for (const item of [...this.outbox.values()]) {
      if (item.conversation_id !== conversationId) continue;
      this.outbox.delete(item.client_id);
      this.setItem(item, "failed", { code, note: t("chat.status.ended_before") });
      this.settled(item.client_id);
    }
  }
}
