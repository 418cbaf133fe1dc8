// One conversation on screen (ChatView) and the set of a person's conversations as tabs (ChatDeck).
//
// The message list is keyed by seq: a message is drawn once whatever path it arrives by (live, resume
// replay, history page, or the ack of our own send), and always in seq order.  Our own messages appear
// at once, keyed by client_id, and take their seq when the ack or the echo arrives.

import { keepInTouch } from "./contacts.js";
import { clock, t, tx } from "./i18n.js";
import { announce, confirmButton, fill, h, isolate, nextId } from "./ui.js";

const REPORT_REASONS = () => [
  ["harassment", t("report.harassment")],
  ["contact", t("report.contact")],
  ["medical_advice", t("report.medical_advice")],
  ["worried", t("report.worried")],
  ["other", t("report.other")],
];

const STATUS_TEXT = () => ({
  queued: t("chat.status.queued"),
  sending: t("chat.status.sending"),
  acked: t("chat.status.sent"),
  failed: t("chat.status.failed"),
});
const ROLE = () => ({ patient: t("role.patient"), survivor: t("role.survivor"), moderator: t("role.moderator") });

/** What to say when a conversation ends: a string, or text and an isolated name. */
function endedText(frame, me, peer, readonly) {
  if (frame.by === "moderator") return t("ended.moderator");
  if (readonly) return frame.by === "patient" ? t("ended.by_patient") : frame.by === "survivor" ? t("ended.by_survivor") : t("ended.plain");
  if (frame.by === me.role) return frame.blocked ? t("ended.you_blocked") : t("ended.you");
  if (frame.by) return tx("ended.peer", { name: isolate(peer.name || t("chat.peer")) });
  return t("ended.plain");
}

export class ChatView {
  /**
   * conv: {conversation_id, epoch, peer: {name, role}, shared}; me: the welcome's user.
   * options: {label (vocabulary labeller), limits, readonly (moderator watching), history (ask for it)}
   */
  constructor(conn, conv, me, { label, limits = {}, readonly = false, history = false, onUnread, onEnded } = {}) {
    this.conn = conn;
    this.conv = conv;
    this.cid = conv.conversation_id;
    this.me = me;
    this.label = label;
    this.limits = limits;
    this.readonly = readonly;
    this.onUnread = onUnread;
    this.onEnded = onEnded;
    this.bySeq = new Map();        // seq -> li
    this.byClient = new Map();     // client_id -> li (our own messages)
    this.ended = false;
    this.typingTimer = null;
    this.lastTypingSent = 0;
    this.unsubscribe = [];
    this.build();
    this.listen();
    if (history) this.requestHistory();
  }

  peerLabel() {
    const p = this.conv.peer || {};
    return p.name || t("chat.peer");
  }

  // ---- layout -----------------------------------------------------------------------------
  /** The transcript's parts, for one-on-one chats and groups alike: a list of messages inside a live
   * "log" region (a list keeps its list semantics so), "earlier messages", typing and the notes. */
  buildTranscript(headingId) {
    this.list = h("ol", { class: "messages", "data-conversation": this.cid });
    this.log = h("div", { class: "log", role: "log", "aria-live": "polite", "aria-labelledby": headingId }, this.list);
    this.more = h("button", { type: "button", class: "link more", text: t("chat.earlier"), hidden: true, on: { click: () => this.requestHistory(true) } });
    this.typing = h("p", { class: "typing", "aria-live": "polite" });
    this.endedNote = h("div", { class: "ended-note", role: "status", hidden: true });
    this.errorNote = h("p", { class: "error-note", role: "alert", hidden: true });
  }

  build() {
    const peer = this.conv.peer || {};
    const headingId = nextId("chat");
    this.buildTranscript(headingId);
    const title = this.readonly
      ? t("chat.conversation", { id: this.cid.slice(0, 10) })
      : tx("chat.talking_with", { name: isolate(peer.name || t("chat.peer")) });
    this.root = h("section", { class: "chat", "aria-labelledby": headingId, "data-conversation": this.cid },
      h("header", { class: "chat-head" },
        h("h2", { id: headingId, class: this.readonly ? "visually-hidden" : null }, title),
        this.readonly ? null : this.sharedLine(),
        this.readonly ? null : this.actions()),
      this.more, this.log, this.typing, this.errorNote, this.endedNote,
      this.readonly ? null : this.composer());
  }

  sharedLine() {
    const shared = this.conv.shared || {};
    const topics = [
      ...(shared.diagnoses || []).map((c) => this.label("diagnoses", c)),
      ...(shared.side_effects || []).map((c) => this.label("side_effects", c)),
    ];     // the same words as the offer's (survivor.js sharedTopics)
    const peer = this.peerLabel();
    return h("div", { class: "shared" },
      h("p", {}, tx("shared.you_share", { topics: h("strong", { text: topics.length ? topics.join(" · ") : t("shared.experience") }) })),
      h("p", { class: "hint" }, tx("shared.sees", { peer: isolate(peer), name: isolate(this.me.name) })));
  }

  actions() {
    const peer = this.peerLabel();
    this.endBtn = confirmButton(t("chat.end"), t("chat.end.ask"), () => this.conn.send({ type: "end", conversation_id: this.cid }), { yes: t("chat.end.yes"), no: t("chat.end.no") });
    this.blockBtn = confirmButton(t("chat.block"), tx("chat.block.ask", { name: isolate(peer) }),
      () => this.conn.send({ type: "block", conversation_id: this.cid }), { yes: t("chat.block"), no: t("common.cancel") });
    this.reportBox = this.reportForm();
    return h("div", { class: "chat-actions" }, this.endBtn, this.blockBtn, this.reportBox);
  }

  reportForm() {
    const select = h("select", {}, REPORT_REASONS().map(([value, text]) => h("option", { value, text })));
    const details = h("textarea", { rows: 2, maxLength: 500 });
    const done = h("p", { class: "hint", role: "status" });
    const selectId = nextId("rep");
    select.id = selectId;
    details.id = nextId("rep");
    const form = h("form", { class: "report-form" },
      h("label", { for: selectId, text: t("report.what") }), select,
      h("label", { for: details.id, text: t("report.details") }), details,
      h("button", { type: "submit", class: "secondary", text: t("report.send") }), done);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const reason = details.value.trim() ? `${select.value}: ${details.value.trim()}` : select.value;
      if (this.conn.send({ type: "report", conversation_id: this.cid, reason })) {
        done.textContent = t("chat.status.sending");
        details.value = "";
      } else {
        done.textContent = t("report.offline");
      }
    });
    this.reportDone = done;
    return h("details", { class: "report" }, h("summary", { text: t("report") }), form);
  }

  composer() {
    const max = this.limits.max_text_chars || 4000;
    this.input = h("textarea", { rows: 2, maxLength: max, placeholder: t("chat.placeholder"), "aria-label": t("chat.message_to", { name: this.peerLabel() }), attrs: { enterkeyhint: "send" } });
    this.sendBtn = h("button", { type: "submit", class: "primary", text: t("chat.send") });
    this.form = h("form", { class: "composer" }, this.input, this.sendBtn);
    this.form.addEventListener("submit", (event) => { event.preventDefault(); this.submit(); });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); this.submit(); }
    });
    this.input.addEventListener("input", () => this.typed());
    return this.form;
  }

  submit() {
    const text = this.input.value.trim();
    if (!text || this.ended) return;
    this.conn.sendMessage(this.cid, text);
    this.input.value = "";
    this.input.focus();
  }

  typed() {
    const now = Date.now();
    if (now - this.lastTypingSent < 2500 || !this.input.value) return;
    this.lastTypingSent = now;
    this.conn.send({ type: "typing", conversation_id: this.cid });
  }

  // ---- frames -------------------------------------------------------------------------
  listen() {
    const mine = (fn) => (frame) => { if (frame.conversation_id === this.cid) fn(frame); };
    const on = (type, fn) => this.unsubscribe.push(this.conn.on(type, mine(fn)));
    on("message", (f) => this.addMessage(f, true));
    on("history", (f) => this.addHistory(f));
    on("outbox", (f) => this.outboxChanged(f));
    on("typing", (f) => this.peerTyping(f));
    on("ended", (f) => this.end(f));
    on("feedback_saved", () => this.feedbackSaved());
    on("reported", () => {
      if (this.reportDone) this.reportDone.textContent = t("report.done");
    });
    on("error", (f) => this.error(f));
  }

  destroy() {
    for (const off of this.unsubscribe) off();
    clearTimeout(this.typingTimer);
    this.root.remove();
  }

  requestHistory(earlier = false) {
    const frame = { type: "history", conversation_id: this.cid, limit: 50 };
    if (earlier && this.bySeq.size) frame.before_seq = Math.min(...this.bySeq.keys());
    this.conn.send(frame);
  }

  addHistory(frame) {
    for (const m of frame.messages || []) this.addMessage(m, false);
    this.more.hidden = !frame.has_more;
    if (frame.state && frame.state !== "open" && !this.ended) this.end({ conversation_id: this.cid });
  }

  sideOf(from) {
    if (from.role === "moderator") return "notice";
    if (this.readonly) return from.role === "survivor" ? "mine" : "theirs";
    return from.role === this.me.role ? "mine" : "theirs";
  }

  addMessage(m, live) {
    if (this.bySeq.has(m.seq)) return;
    const from = m.from || {};
    let li = m.client_id ? this.byClient.get(m.client_id) : null;
    if (li) {
      this.setStatus(li, "acked");
    } else {
      li = this.messageItem(this.sideOf(from), from, m.text, m.ts);
      if (m.client_id && this.sideOf(from) === "mine" && !this.readonly) this.byClient.set(m.client_id, li);
    }
    li.dataset.seq = String(m.seq);
    this.bySeq.set(m.seq, li);
    this.place(li, m.seq);
    if (live && this.sideOf(from) !== "mine") {
      this.typing.textContent = "";
      this.onUnread?.();
    }
  }

  messageItem(side, from, text, ts) {
    let who = from.name || t("chat.deleted_user");
    if (side === "mine" && !this.readonly) who = t("chat.you");
    if (side === "notice") who = t("role.moderator");
    const roleTag = this.readonly && from.role && from.role !== "moderator" ? ` (${ROLE()[from.role] || from.role})` : "";
    return h("li", { class: `msg ${side}` },
      h("p", { class: "meta" }, h("span", { class: "who" }, isolate(who), roleTag),
        ts ? h("time", { dateTime: new Date(ts).toISOString(), text: clock(ts) }) : null),
      h("p", { class: "text", text: text }));
  }

  /** Insert li so that seq-keyed items stay ascending; un-acked items stay at the end. */
  place(li, seq) {
    const items = this.list.children;
    let before = null;
    for (let i = items.length - 1; i >= 0; i -= 1) {
      const other = items[i];
      if (other === li) continue;
      const s = other.dataset.seq ? Number(other.dataset.seq) : Infinity;
      if (s < seq) break;
      before = other;
    }
    if (li.parentNode !== this.list || li.nextSibling !== before) this.list.insertBefore(li, before);
    if (before === null) li.scrollIntoView?.({ block: "nearest" });
  }

  setStatus(li, state, note) {
    let status = li.querySelector(".status");
    if (!status) { status = h("p", { class: "status" }); li.append(status); }
    status.textContent = note && state !== "acked" ? `${STATUS_TEXT()[state]}: ${note}` : STATUS_TEXT()[state];
    li.dataset.state = state;
  }

  outboxChanged(item) {
    let li = this.byClient.get(item.client_id);
    if (!li) {
      if (item.state === "acked" && item.seq && this.bySeq.has(item.seq)) return;
      li = this.messageItem("mine", { name: this.me.name, role: this.me.role }, item.text, null);
      li.dataset.clientId = item.client_id;
      this.byClient.set(item.client_id, li);
      this.list.append(li);
      li.scrollIntoView?.({ block: "nearest" });
    }
    if (item.state === "acked" && item.seq) {
      const existing = this.bySeq.get(item.seq);
      if (existing && existing !== li) { li.remove(); this.byClient.set(item.client_id, existing); this.setStatus(existing, "acked"); return; }
      li.dataset.seq = String(item.seq);
      this.bySeq.set(item.seq, li);
      if (item.ts && !li.querySelector("time")) {
        li.querySelector(".meta").append(h("time", { dateTime: new Date(item.ts).toISOString(), text: clock(item.ts) }));
      }
      this.place(li, item.seq);
    }
    this.setStatus(li, item.state, item.note);
  }

  peerTyping(frame) {
    if (frame.from && frame.from.role === this.me.role) return;
    fill(this.typing, tx("chat.typing", { name: isolate(frame.from?.name || this.peerLabel()) }));
    clearTimeout(this.typingTimer);
    this.typingTimer = setTimeout(() => { this.typing.textContent = ""; }, 5000);
  }

  error(frame) {
    if (frame.code === "recovery_failed") {
      // the log we knew is gone: start the transcript again from the server's copy
      this.bySeq.clear();
      for (const li of [...this.list.children]) if (li.dataset.seq) li.remove();
      this.requestHistory();
      return;
    }
    if (frame.client_id || frame.ref === "typing") return;     // shown on the message itself, or harmless
    this.errorNote.hidden = false;
    this.errorNote.textContent = frame.message || t("common.error");
    if (frame.code === "conversation_ended" && !this.ended) this.end({ conversation_id: this.cid });
  }

  // ---- the end ------------------------------------------------------------------------
  end(frame) {
    if (this.ended) return;
    this.ended = true;
    this.typing.textContent = "";
    clearTimeout(this.typingTimer);
    this.conn.forget?.(this.cid);
    const text = endedText(frame, this.me, this.conv.peer || {}, this.readonly);
    if (this.form) { this.input.disabled = true; this.sendBtn.disabled = true; this.form.hidden = true; }
    if (this.endBtn) { this.endBtn.hidden = true; this.blockBtn.hidden = true; }
    const said = h("p", { class: "ended-text", tabIndex: -1 }, text);
    const hadFocus = this.root.contains(document.activeElement);
    fill(this.endedNote, said);
    this.endedNote.hidden = false;
    const peer = this.conv.peer || {};
    if (!this.readonly && (peer.role === "patient" || peer.role === "survivor") && !frame.blocked && frame.by !== "moderator") {
      this.endedNote.append(keepInTouch(this.conn, this.cid, this.peerLabel(), this.unsubscribe));
    }
    if (!this.readonly) this.endedNote.append(this.feedbackForm());
    announce(said.textContent);
    if (hadFocus) said.focus();         // the composer that had the focus is gone: keep it in the chat
    this.onEnded?.(this);
  }

  feedbackForm() {
    const name = nextId("rating");
    const labels = [t("feedback.1"), t("feedback.2"), t("feedback.3"), t("feedback.4"), t("feedback.5")];
    const radios = labels.map((text, i) => {
      const input = h("input", { type: "radio", name, value: String(i + 1), id: nextId("r") });
      return h("div", { class: "rating-option" }, input, h("label", { for: input.id, text: t("feedback.option", { rating: i + 1, text }) }));
    });
    const comment = h("textarea", { rows: 2, maxLength: 2000, id: nextId("fb") });
    this.feedbackStatus = h("p", { class: "hint", role: "status" });
    const form = h("form", { class: "feedback" },
      h("fieldset", {}, h("legend", { text: t("feedback.title") }), radios),
      h("label", { for: comment.id, text: t("feedback.comment") }), comment,
      h("div", { class: "row" },
        h("button", { type: "submit", class: "primary", text: t("feedback.send") }),
        h("button", { type: "button", class: "secondary", text: t("common.close"), on: { click: () => this.onClose?.(this) } })),
      this.feedbackStatus);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const picked = form.querySelector(`input[name="${name}"]:checked`);
      if (!picked) { this.feedbackStatus.textContent = t("feedback.pick"); return; }
      const frame = { type: "feedback", conversation_id: this.cid, rating: Number(picked.value) };
      if (comment.value.trim()) frame.comment = comment.value.trim();
      if (!this.conn.send(frame)) this.feedbackStatus.textContent = t("common.offline");
    });
    return form;
  }

  feedbackSaved() {
    const form = this.endedNote.querySelector("form.feedback");
    if (form) form.replaceWith(h("div", { class: "row" },
      h("p", { class: "thanks", text: t("feedback.thanks") }),
      h("button", { type: "button", class: "secondary", text: t("common.close"), on: { click: () => this.onClose?.(this) } })));
  }
}

/** A person's conversations: tabs when there is more than one, a single panel otherwise. */
export class ChatDeck {
  constructor(conn, { label, onChange, onOpenedAway } = {}) {
    this.conn = conn;
    this.label = label;
    this.onChange = onChange;
    this.onOpenedAway = onOpenedAway;
    this.views = new Map();        // conversation_id -> {view, tab}
    this.selected = null;
    this.me = null;
    this.limits = {};
    this.tabs = h("div", { class: "tabs", role: "tablist", "aria-label": t("chat.tabs"), hidden: true });
    this.tabs.addEventListener("keydown", (event) => this.tabKeys(event));
    this.panels = h("div", { class: "panels" });
    this.root = h("div", { class: "deck" }, this.tabs, this.panels);
    conn.on("welcome", (f) => this.welcome(f));
    conn.on("matched", (f) => this.add(f, { history: false, focus: true }));
  }

  get size() {
    return this.views.size;
  }

  get openCount() {
    return [...this.views.values()].filter(({ view }) => !view.ended).length;
  }

  welcome(frame) {
    this.me = frame.user;
    this.limits = frame.limits || {};
    const live = new Set();
    const opened = [];
    // groups are conversations too, but they live in the Groups view (groups.js), not in these tabs
    const groups = new Set((frame.groups || []).map((g) => g.conversation_id || g.group_id));
    for (const conv of frame.conversations || []) {
      if (conv.group || groups.has(conv.conversation_id)) continue;
      live.add(conv.conversation_id);
      if (this.views.has(conv.conversation_id)) continue;
      if (conv.talk_later) opened.push(conv);       // opened from a talk-later request, maybe while we were away
      else this.add(conv, { history: true });
    }
    // a chat that opened while this person was away goes first, and is the one shown
    opened.sort((a, b) => (a.created || 0) - (b.created || 0));
    for (const conv of opened) this.add(conv, { history: true, first: true });
    if (opened.length) this.onOpenedAway?.(opened);
    // a conversation that ended while we were away: its "ended" frame was never delivered to us
    for (const [cid, { view }] of this.views) {
      if (!live.has(cid) && !view.ended) view.end({ conversation_id: cid });
    }
  }

  add(conv, { history, focus = false, first = false }) {
    const cid = conv.conversation_id;
    if (this.views.has(cid) || !this.me) return;
    const view = new ChatView(this.conn, conv, this.me, {
      label: this.label, limits: this.limits, history,
      onUnread: () => this.unread(cid), onEnded: () => this.changed(),
    });
    view.onClose = () => this.remove(cid);
    const tab = h("button", { type: "button", role: "tab", class: "tab", id: nextId("tab"), "aria-selected": "false", "aria-controls": nextId("panel") },
      h("span", { dir: "auto", text: conv.peer?.name || t("chat.tab") }), h("span", { class: "badge", hidden: true, text: t("chat.new") }));
    view.root.id = tab.getAttribute("aria-controls");
    view.root.setAttribute("role", "tabpanel");
    view.root.setAttribute("aria-labelledby", tab.id);
    view.root.hidden = true;
    tab.addEventListener("click", () => this.select(cid));
    if (first) {
      this.tabs.prepend(tab);
      this.panels.prepend(view.root);
      this.views = new Map([[cid, { view, tab }], ...this.views]);
    } else {
      this.tabs.append(tab);
      this.panels.append(view.root);
      this.views.set(cid, { view, tab });
    }
    if (!this.selected || focus || first) this.select(cid);
    if (focus) announce(t("chat.connected", { name: conv.peer?.name || t("chat.peer") }));
    this.changed();
    if (focus) view.input?.focus();
  }

  remove(cid) {
    const entry = this.views.get(cid);
    if (!entry) return;
    entry.view.destroy();
    entry.tab.remove();
    this.views.delete(cid);
    if (this.selected === cid) {
      this.selected = null;
      const next = this.views.keys().next();
      if (!next.done) this.select(next.value);
    }
    this.changed();
  }

  select(cid) {
    this.selected = cid;
    for (const [id, { view, tab }] of this.views) {
      const on = id === cid;
      view.root.hidden = !on;
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      if (on) tab.querySelector(".badge").hidden = true;
    }
  }

  unread(cid) {
    if (cid !== this.selected) this.views.get(cid).tab.querySelector(".badge").hidden = false;
    else if (document.hidden) announce(t("chat.new_message"));
  }

  tabKeys(event) {
    if (!["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) return;
    const ids = [...this.views.keys()];
    let i = ids.indexOf(this.selected);
    const rtl = document.documentElement.dir === "rtl";      // the arrow that points "forward" swaps
    if (event.key === (rtl ? "ArrowLeft" : "ArrowRight")) i = (i + 1) % ids.length;
    if (event.key === (rtl ? "ArrowRight" : "ArrowLeft")) i = (i - 1 + ids.length) % ids.length;
    if (event.key === "Home") i = 0;
    if (event.key === "End") i = ids.length - 1;
    this.select(ids[i]);
    this.views.get(ids[i]).tab.focus();
    event.preventDefault();
  }

  changed() {
    this.tabs.hidden = this.views.size < 2;
    this.onChange?.(this);
  }
}
