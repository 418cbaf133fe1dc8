// Groups ("circles"): standing peer groups on one topic and in one language, led by facilitators
// (docs/protocol.md, "Groups").  One view for patients, survivors and moderators:
//
// * the groups that fit the person's profile (list_groups with the profile they entered for talk-now or
//   availability), each with its members/capacity, its facilitators, the next session in the viewer's
//   own time (Intl), "full" and the place on its waitlist; join and leave;
// * "Find a group for me" (find_group): joins the best-fitting group with room, or waits for one
//   (queued for:"group", with Cancel) and joins by itself when a facilitator opens a fitting group;
// * the group chat: ChatView (chat.js) with the members and who is online, the pinned message at the top,
//   messages showing the author's pseudonym and role, and the messages of a member this viewer has blocked
//   hidden (joined.members[].blocked, member_joined.blocked: names are unique in a group);
// * for facilitators of the group and for moderators: pin, mute, remove, close; and for facilitators and
//   moderators, creating a group.
//
// Everything a person typed (titles, descriptions, names, pinned text, messages) goes in as text only.

import { ChatView } from "./chat.js";
import { clock, currentLocale, list, minutesText, t, tx } from "./i18n.js";
import { announce, confirmButton, fill, h, isolate, nextId } from "./ui.js";

const MUTE_MINUTES = [5, 15, 30, 60, 240, 1440];
const DURATIONS = [30, 45, 60, 90, 120];
const CLOSED_STATES = new Set(["closed", "ended"]);

const ROLE = () => ({ patient: t("role.patient"), survivor: t("role.survivor"), moderator: t("role.moderator") });

/** The browser's own IANA time zone ("Europe/Paris"), the default of a new group's schedule. */
export function browserTimeZone() {
  try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch { return "UTC"; }
}

/** An ISO time with its offset ("2026-12-08T18:00:00+01:00"), in the viewer's own time zone and words. */
export function sessionTime(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return null;
  return new Intl.DateTimeFormat(currentLocale(), { weekday: "long", day: "numeric", month: "long", hour: "2-digit", minute: "2-digit" }).format(when);
}

/** ISO weekday names, 1 = Monday … 7 = Sunday, in the page's language. */
function weekdays() {
  const fmt = new Intl.DateTimeFormat(currentLocale(), { weekday: "long", timeZone: "UTC" });
  return [1, 2, 3, 4, 5, 6, 7].map((d) => [d, fmt.format(new Date(Date.UTC(2024, 0, d)))]);     // 2024-01-01 was a Monday
}

function topicLabel(topic, label) {
  if (!topic) return "";
  return label(topic.kind === "side_effect" ? "side_effects" : "diagnoses", topic.code);
}

function memberRole(m) {
  const role = ROLE()[m.role] || m.role || "";
  return m.facilitator ? t("groups.member.facilitator_role", { role }) : role;
}

// ---- one group's chat ------------------------------------------------------------------------------

/**
 * A group conversation: ChatView with a group's header (title, topic, pinned message, members and who is
 * online), facilitator tools when this person may use them, and "Leave".  conv: {conversation_id, epoch,
 * group (summary), members, pinned, name (this person's name in the group), state}.
 */
export class GroupChat extends ChatView {
  constructor(conn, conv, me, options) {
    super(conn, conv, me, { ...options, history: false });
    this.onLeft = options.onLeft;
    this.listenGroup();
    this.requestHistory();
  }

  get gid() { return this.conv.conversation_id; }
  get myName() { return this.conv.name || this.me.name; }

  get members() {
    this.conv.members ||= [];
    return this.conv.members;
  }

  get blocked() {
    return new Set(this.members.filter((m) => m.blocked).map((m) => m.name).concat([...(this.conv.blockedNames || [])]));
  }

  /** A facilitator of this group (a member with the facilitator mark) or a moderator. */
  get canModerate() {
    if (this.me.role === "moderator") return true;
    const mine = this.members.find((m) => m.name === this.myName);
    return Boolean(mine?.facilitator || (this.conv.group?.facilitators || []).includes(this.myName));
  }

  peerLabel() {
    return this.conv.group?.title || this.conv.title || t("groups.group");
  }

  // ---- layout ----
  build() {
    const headingId = nextId("group");
    this.headingId = headingId;
    this.buildTranscript(headingId);
    this.muteNote = h("p", { class: "notice mute-note", role: "status", hidden: true });
    this.title = h("h2", { id: headingId, dir: "auto", text: this.peerLabel() });
    this.topicLine = h("p", { class: "hint group-topic" });
    this.pinnedBox = h("section", { class: "pinned", "aria-label": t("groups.pinned"), hidden: true });
    this.memberSummary = h("summary");
    this.memberList = h("ul", { class: "member-list" });
    this.membersBox = h("details", { class: "members", open: true }, this.memberSummary, this.memberList);
    this.toolsBox = h("details", { class: "facilitator-tools", hidden: true });
    this.leaveBox = h("span");
    this.reportBox = this.reportForm();
    this.root = h("section", { class: "chat group-chat", "aria-labelledby": headingId, "data-conversation": this.cid, "data-group": this.cid },
      h("header", { class: "chat-head" },
        this.title, this.topicLine,
        h("p", { class: "hint group-you" }, tx("groups.chat.you_are", { name: isolate(this.myName) })),
        h("div", { class: "chat-actions" }, this.leaveBox, this.reportBox)),
      this.pinnedBox, this.membersBox, this.toolsBox,
      this.more, this.log, this.typing, this.muteNote, this.errorNote, this.endedNote,
      this.composer());
    this.input.setAttribute("aria-label", t("groups.chat.message_to", { title: this.peerLabel() }));
    this.refresh(this.conv);
  }

  /** New facts about the group (a fresh joined frame, or the summary): redraw the header. */
  refresh(conv) {
    Object.assign(this.conv, conv);
    const group = this.conv.group || {};
    this.title.textContent = this.peerLabel();
    const bits = [topicLabel(group.topic, this.label), group.language ? this.label("languages", group.language) : null].filter(Boolean);
    this.topicLine.textContent = bits.join(" · ");
    fill(this.leaveBox, this.ended ? null : confirmButton(t("groups.leave"), t("groups.leave.ask"),
      () => this.conn.send({ type: "leave_group", group_id: this.gid }), { yes: t("groups.leave.yes"), no: t("common.cancel") }));
    this.drawPinned();
    this.drawMembers();
    this.drawTools();
    if (CLOSED_STATES.has(group.state) || CLOSED_STATES.has(this.conv.state)) this.closed(t("groups.closed"));
  }

  drawPinned() {
    const pinned = this.conv.pinned;
    this.pinnedBox.hidden = !pinned?.text;
    if (!pinned?.text) { this.pinnedBox.replaceChildren(); return; }
    fill(this.pinnedBox,
      h("p", { class: "pinned-head" }, h("span", { class: "pin", "aria-hidden": "true" }),
        pinned.by ? tx("groups.pinned.by", { name: isolate(pinned.by) }) : t("groups.pinned")),
      h("p", { class: "pinned-text", dir: "auto", text: pinned.text }));
  }

  drawMembers() {
    const members = this.members;
    const online = members.filter((m) => m.online).length;
    const capacity = this.conv.group?.capacity;
    this.memberSummary.textContent = capacity
      ? t("groups.members.summary", { members: members.length, capacity, online })
      : t("groups.members.summary.plain", { members: members.length, online });
    const blocked = this.blocked;
    fill(this.memberList, members.map((m) => h("li", { class: `member ${m.online ? "on" : "off"}`, "data-name": m.name },
      h("span", { class: "dot", "aria-hidden": "true" }),
      h("strong", {}, isolate(m.name)),
      m.name === this.myName ? h("span", { class: "hint", text: ` ${t("groups.member.you")}` }) : null,
      h("span", { class: "hint", text: ` · ${memberRole(m)}` }),
      h("span", { class: `presence ${m.online ? "on" : "off"}`, text: m.online ? t("groups.member.online") : t("groups.member.away") }),
      blocked.has(m.name) ? h("span", { class: "hint", text: ` · ${t("groups.member.blocked")}` }) : null,
      this.canModerate && m.mutedUntil && m.mutedUntil > Date.now()
        ? h("span", { class: "pill", text: t("groups.member.muted", { time: clock(m.mutedUntil) }) }) : null)));
    this.fillMemberSelects();
  }

  /** The members a facilitator may mute or remove: not a facilitator of the group, not themselves. */
  targets() {
    return this.members.filter((m) => !m.facilitator && m.name !== this.myName);
  }

  fillMemberSelects() {
    for (const select of [this.muteWho, this.removeWho]) {
      if (!select) continue;
      const was = select.value;
      fill(select, this.targets().map((m) => h("option", { value: m.name, text: m.name, selected: m.name === was })));
    }
    const none = this.targets().length === 0;
    for (const node of [this.muteBtn, this.unmuteBtn, this.removeRow]) if (node) node.hidden = none;
    if (this.noTargets) this.noTargets.hidden = !none;
  }

  drawTools() {
    const show = this.canModerate && !this.ended;
    this.toolsBox.hidden = !show;
    if (!show || this.toolsBuilt) { this.fillMemberSelects(); return; }
    this.toolsBuilt = true;
    this.toolStatus = h("p", { class: "hint", role: "status" });
    // pin
    const pinText = h("textarea", { rows: 2, maxLength: 1000, id: nextId("pin") });
    const pinForm = h("form", { class: "tool pin-form" },
      h("label", { for: pinText.id, text: t("groups.tools.pin.label") }), pinText,
      h("div", { class: "row" },
        h("button", { type: "submit", class: "secondary", text: t("groups.tools.pin") }),
        h("button", { type: "button", class: "link", text: t("groups.tools.unpin"), on: { click: () => this.tool({ type: "pin", group_id: this.gid, text: "" }) } })));
    pinForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = pinText.value.trim();
      if (text && this.tool({ type: "pin", group_id: this.gid, text })) pinText.value = "";
    });
    // mute
    this.muteWho = h("select", { id: nextId("mute-who") });
    const minutes = h("select", { id: nextId("mute-min") }, MUTE_MINUTES.map((n) => h("option", { value: String(n), text: minutesText(n), selected: n === 15 })));
    this.muteBtn = h("button", { type: "submit", class: "secondary", text: t("groups.tools.mute") });
    this.unmuteBtn = h("button", { type: "button", class: "link", text: t("groups.tools.unmute"),
      on: { click: () => this.muteWho.value && this.tool({ type: "mute_member", group_id: this.gid, name: this.muteWho.value, minutes: 0 }) } });
    const muteForm = h("form", { class: "tool mute-form" },
      h("div", { class: "field" }, h("label", { for: this.muteWho.id, text: t("groups.tools.mute.who") }), this.muteWho),
      h("div", { class: "field" }, h("label", { for: minutes.id, text: t("groups.tools.mute.for") }), minutes),
      h("div", { class: "row" }, this.muteBtn, this.unmuteBtn));
    muteForm.addEventListener("submit", (event) => {
      event.preventDefault();
      if (this.muteWho.value) this.tool({ type: "mute_member", group_id: this.gid, name: this.muteWho.value, minutes: Number(minutes.value) });
    });
    // remove
    this.removeWho = h("select", { id: nextId("remove-who") });
    const reason = h("input", { type: "text", maxLength: 500, id: nextId("remove-why") });
    this.removeRow = h("div", { class: "row" }, confirmButton(t("groups.tools.remove"), t("groups.tools.remove.ask"), () => {
      if (!this.removeWho.value) return;
      const frame = { type: "remove_member", group_id: this.gid, name: this.removeWho.value };
      if (reason.value.trim()) frame.reason = reason.value.trim();
      if (this.tool(frame)) reason.value = "";
    }, { yes: t("groups.tools.remove.yes"), no: t("common.cancel") }));
    const removeBox = h("div", { class: "tool remove-form" },
      h("div", { class: "field" }, h("label", { for: this.removeWho.id, text: t("groups.tools.remove.who") }), this.removeWho),
      h("div", { class: "field" }, h("label", { for: reason.id, text: t("groups.tools.remove.reason") }), reason),
      this.removeRow);
    this.noTargets = h("p", { class: "hint", text: t("groups.tools.nobody") });
    // close
    const close = h("div", { class: "tool row" }, confirmButton(t("groups.tools.close"), t("groups.tools.close.ask"),
      () => this.tool({ type: "close_group", group_id: this.gid }), { cls: "secondary", yes: t("groups.tools.close.yes"), no: t("common.cancel") }));
    fill(this.toolsBox, h("summary", { text: t("groups.tools") }),
      h("p", { class: "hint", text: t("groups.tools.lead") }),
      h("div", { class: "tools-grid" }, pinForm, h("div", {}, this.noTargets, muteForm), removeBox), close, this.toolStatus);
    this.fillMemberSelects();
  }

  tool(frame) {
    if (!this.conn.send(frame)) { this.toolStatus.textContent = t("common.offline"); return false; }
    this.toolStatus.textContent = t("chat.status.sending");
    return true;
  }

  // ---- messages: the author's name and role; mine by my name in the group; blocked people hidden ----
  sideOf(from) {
    if (from.name && from.name === this.myName && !this.readonly) return "mine";
    if (from.role === "moderator" && !this.members.some((m) => m.name === from.name)) return "notice";
    return "theirs";
  }

  messageItem(side, from, text, ts) {
    let who = from.name || t("chat.deleted_user");
    if (side === "mine") who = t("chat.you");
    if (side === "notice") who = t("role.moderator");
    const member = this.members.find((m) => m.name === from.name);
    const role = side === "theirs" && from.role ? ` · ${memberRole({ role: from.role, facilitator: member?.facilitator })}` : "";
    const li = h("li", { class: `msg ${side}`, "data-from": from.name || "" },
      h("p", { class: "meta" }, h("span", { class: "who" }, isolate(who), h("span", { class: "role", text: role })),
        ts ? h("time", { dateTime: new Date(ts).toISOString(), text: clock(ts) }) : null),
      h("p", { class: "text", dir: "auto", text: text ?? "" }));
    if (side === "theirs" && this.blocked.has(from.name)) li.hidden = true;      // blocked by this viewer
    return li;
  }

  hideBlocked() {
    const blocked = this.blocked;
    for (const li of this.list.querySelectorAll("li.msg.theirs")) li.hidden = blocked.has(li.dataset.from);
  }

  peerTyping(frame) {
    const name = frame.from?.name;
    if (!name || name === this.myName || this.blocked.has(name)) return;
    fill(this.typing, tx("chat.typing", { name: isolate(name) }));
    clearTimeout(this.typingTimer);
    this.typingTimer = setTimeout(() => { this.typing.textContent = ""; }, 5000);
  }

  /** A line in the transcript ("Ana joined the group"), kept in place among the seq-ordered messages. */
  systemLine(text) {
    const seqs = [...this.bySeq.keys()];
    const after = seqs.length ? Math.max(...seqs) : Number(this.conv.seq || 0);
    const li = h("li", { class: "sysline", "data-after": String(after) }, h("p", { text }));
    li.dataset.seq = String(after + 0.5);
    this.list.insertBefore(li, [...this.list.children].find((c) => !c.dataset.seq) || null);
    li.scrollIntoView?.({ block: "nearest" });
  }

  addHistory(frame) {
    for (const m of frame.messages || []) this.addMessage(m, false);
    this.more.hidden = !frame.has_more;
    if (frame.state && CLOSED_STATES.has(frame.state)) this.closed(t("groups.closed"));
  }

  outboxChanged(item) {
    if (item.state === "failed" && item.code === "muted") {
      item = { ...item, note: t("groups.muted.not_sent", { duration: minutesText(Math.max(1, Math.ceil((item.retry_after_s || 60) / 60))) }) };
    }
    super.outboxChanged(item);
  }

  error(frame) {
    if (frame.code === "muted") { this.mutedFor(frame.retry_after_s); return; }
    if (frame.code === "conversation_ended" || frame.code === "group_closed") { this.closed(t("groups.closed")); return; }
    if (frame.code === "forbidden" && frame.ref === "send") { this.closed(t("groups.removed")); return; }
    if (["mute_member", "remove_member", "pin", "close_group", "readmit_member"].includes(frame.ref)) {
      if (this.toolStatus) this.toolStatus.textContent = frame.message || t("common.error");
      return;
    }
    if (frame.ref === "leave_group" || frame.ref === "join_group") return;      // the groups list says it
    super.error(frame);
  }

  /** This person's sends are refused for `seconds` more: say so kindly, and when they may write again. */
  mutedFor(seconds, until) {
    const end = until || (Date.now() + Math.max(1, seconds || 60) * 1000);
    this.mutedUntil = end;
    this.muteNote.hidden = false;
    this.muteNote.textContent = t("groups.muted", { time: clock(end), duration: minutesText(Math.max(1, Math.ceil((end - Date.now()) / 60000))) });
    clearTimeout(this.muteTimer);
    this.muteTimer = setTimeout(() => { this.muteNote.textContent = t("groups.unmuted"); }, Math.min(end - Date.now(), 2 ** 31 - 1));
  }

  listenGroup() {
    const mine = (fn) => (frame) => { if ((frame.group_id || frame.conversation_id) === this.gid) fn(frame); };
    const on = (type, fn) => this.unsubscribe.push(this.conn.on(type, mine(fn)));
    on("presence", (f) => {
      const online = new Set(f.online || []);
      for (const m of this.members) m.online = online.has(m.name);
      for (const name of online) if (!this.members.some((m) => m.name === name)) this.members.push({ name, online: true });
      this.drawMembers();
    });
    on("member_joined", (f) => {
      const known = this.members.find((m) => m.name === f.name);
      const entry = { name: f.name, role: f.role, facilitator: Boolean(f.facilitator), online: known?.online ?? true, blocked: Boolean(f.blocked) };
      if (known) Object.assign(known, entry); else this.members.push(entry);
      if (f.blocked) this.hideBlocked();
      this.drawMembers();
      if (!f.blocked) this.systemLine(t("groups.event.joined", { name: f.name }));
    });
    on("member_left", (f) => {
      const i = this.members.findIndex((m) => m.name === f.name);
      if (i >= 0) {
        if (this.members[i].blocked) (this.conv.blockedNames ||= new Set()).add(f.name);    // their messages stay hidden
        this.members.splice(i, 1);
      }
      this.drawMembers();
      if (!this.blocked.has(f.name)) this.systemLine(t("groups.event.left", { name: f.name }));
    });
    on("member_muted", (f) => {
      const until = Number(f.until) || 0;
      if (f.name === this.myName) {
        if (until > Date.now()) this.mutedFor(null, until);
        else { clearTimeout(this.muteTimer); this.muteNote.textContent = t("groups.unmuted"); }
      }
      const m = this.members.find((x) => x.name === f.name);
      if (m) { m.mutedUntil = until; this.drawMembers(); }
    });
    on("pinned", (f) => {
      this.conv.pinned = f.pinned || null;
      this.drawPinned();
      announce(f.pinned?.text ? t("groups.pinned.new") : t("groups.pinned.gone"));
    });
    on("done", (f) => {
      if (!this.toolStatus) return;
      const text = { mute_member: t("groups.done.mute"), remove_member: t("groups.done.remove"), pin: t("groups.done.pin"),
        close_group: t("groups.done.close"), readmit_member: t("groups.done.readmit") }[f.ref];
      if (text) this.toolStatus.textContent = text;
    });
    on("group_closed", () => this.closed(t("groups.closed")));
    this.unsubscribe.push(this.conn.on("error", (f) => {
      if (f.code === "muted" && !f.conversation_id && f.client_id && this.byClient.has(f.client_id)) this.mutedFor(f.retry_after_s);
    }));
    on("removed", () => this.closed(t("groups.removed")));
  }

  /** The group closed (or this person was removed): the transcript stays, nothing more can be written. */
  closed(text) {
    if (this.ended) { if (text && this.closedText) this.closedText.textContent = text; return; }
    this.ended = true;
    this.typing.textContent = "";
    clearTimeout(this.typingTimer);
    if (this.form) { this.input.disabled = true; this.sendBtn.disabled = true; this.form.hidden = true; }
    this.toolsBox.hidden = true;
    this.closedText = h("p", { class: "ended-text", tabIndex: -1, text });
    const hadFocus = this.root.contains(document.activeElement);
    fill(this.endedNote, this.closedText);
    this.endedNote.hidden = false;
    announce(text);
    if (hadFocus) this.closedText.focus();
  }

  end() {
    this.closed(t("groups.closed"));
  }

  destroy() {
    clearTimeout(this.muteTimer);
    super.destroy();
  }
}

// ---- the Groups view -----------------------------------------------------------------------------------

/**
 * The Groups view.  options: {vocabulary, label, role, profile: () => profile, profileProblem: () => "" |
 * text, onNews: (text) => void (something happened while the view is hidden)}.  Returns {node, shown(bool)}.
 */
export function groupsView(conn, { vocabulary, label, role, profile = () => null, profileProblem = () => "", onNews, onOpen }) {
  const mine = new Map();           // group_id -> summary (a member, or on the waitlist)
  const chats = new Map();          // group_id -> GroupChat
  let fit = null;                   // the last listing that fits the profile (summaries), null before any
  let asked = [];                   // what each list_groups sent is waiting for: "mine" | "fit" (answered in order)
  let pendingJoin = null;           // the group_id of the last join_group (a group_full error may not name it)
  let openedByMe = new Set();       // joins this person asked for: open the chat when joined arrives
  let waiting = null;               // {position}: waiting for a group (find_group)
  let open = null;                  // the group_id whose chat is on screen
  let me = null;
  let visible = false;

  const status = h("p", { class: "groups-note", role: "status", hidden: true });

  // your groups
  const mineList = h("ul", { class: "group-list mine" });
  const mineEmpty = h("p", { class: "hint", text: t("groups.mine.empty") });
  const mineBox = h("section", { class: "card my-groups", "aria-labelledby": "my-groups-title" },
    h("h2", { id: "my-groups-title", text: t("groups.mine") }), mineEmpty, mineList);

  // groups that fit
  const findError = h("p", { class: "error-note", role: "alert" });
  const showBtn = h("button", { type: "button", class: "secondary show-groups", text: t("groups.show"), on: { click: () => listFit() } });
  const findBtn = h("button", { type: "button", class: "primary find-group", text: t("groups.find"), on: { click: () => findGroup() } });
  const waitPos = h("p", { class: "position" });
  const waitBox = h("div", { class: "group-waiting", hidden: true },
    h("div", { class: "pulse", "aria-hidden": "true" }),
    h("div", { role: "status", "aria-live": "polite" }, h("p", { class: "wait-title", text: t("groups.wait.title") }), waitPos),
    h("p", { class: "hint", text: t("groups.wait.hint") }),
    h("button", { type: "button", class: "secondary", text: t("groups.wait.cancel"), on: { click: () => {
      if (!conn.send({ type: "cancel_find_group" })) findError.textContent = t("common.offline");
    } } }));
  const fitList = h("ul", { class: "group-list fit" });
  const fitEmpty = h("p", { class: "hint", hidden: true, text: t("groups.fit.empty") });
  const findBox = h("section", { class: "card find-groups", "aria-labelledby": "find-groups-title", hidden: role === "moderator" },
    h("h2", { id: "find-groups-title", text: t("groups.fit") }),
    h("p", { class: "lead", text: t("groups.lead") }),
    h("div", { class: "row" }, findBtn, showBtn), findError, waitBox, fitEmpty, fitList);

  // create (facilitators and moderators)
  const create = createForm();

  // the open group
  const back = h("button", { type: "button", class: "link back", text: t("groups.back"), on: { click: () => closeChat(true) } });
  const chatPanel = h("div", { class: "group-panel", hidden: true }, back);

  const node = h("div", { class: "groups-view" }, status, chatPanel, mineBox, findBox, create.node);

  function say(text) {
    status.textContent = text;
    status.hidden = !text;
    if (text) announce(text);
    if (text && !visible) onNews?.(text);
  }

  // ---- a group as a card ----
  function card(g, where) {
    const titleId = nextId("gt");
    const full = g.members >= g.capacity;
    const joined = Boolean(g.joined);
    const waitlisted = !joined && g.waitlist_position;
    const closedGroup = CLOSED_STATES.has(g.state);
    const when = g.next_session ? sessionTime(g.next_session) : null;
    const facilitators = g.facilitators || [];
    const buttons = [];
    if (joined) {
      buttons.push(h("button", { type: "button", class: "primary", text: t("groups.open"), "aria-describedby": titleId, on: { click: () => openGroup(g.group_id) } }));
    } else if (waitlisted) {
      buttons.push(h("button", { type: "button", class: "secondary", text: t("groups.waitlist.leave"), "aria-describedby": titleId,
        on: { click: () => leave(g.group_id) } }));
    } else if (!closedGroup) {
      buttons.push(h("button", { type: "button", class: full ? "secondary" : "primary", text: full ? t("groups.join.waitlist") : t("groups.join"),
        "aria-describedby": titleId, on: { click: () => join(g.group_id) } }));
    }
    const topic = [topicLabel(g.topic, label), g.language ? label("languages", g.language) : null].filter(Boolean).join(" · ");
    const unread = g.unread || chats.get(g.group_id)?.unread;
    return h("li", { class: `group-card${full ? " full" : ""}`, "data-group": g.group_id, "data-where": where },
      h("h3", { id: titleId, dir: "auto", text: g.title || t("groups.group") }),
      unread ? h("p", { class: "badge-line" }, h("span", { class: "badge", text: t("chat.new") })) : null,
      h("p", { class: "group-tags" },
        topic ? h("span", { class: "topic", text: topic }) : null,
        joined ? h("span", { class: "pill joined", text: t("groups.joined") }) : null,
        full && !closedGroup ? h("span", { class: "pill full", text: t("groups.full") }) : null,
        closedGroup ? h("span", { class: "pill closed", text: t("groups.closed.tag") }) : null),
      g.description ? h("p", { class: "description", dir: "auto", text: g.description }) : null,
      h("p", { class: "group-facts" },
        typeof g.members === "number" ? h("span", { class: "count", text: t("groups.count", { members: g.members, capacity: g.capacity }) }) : null,
        facilitators.length ? h("span", { class: "led" }, tx("groups.led_by", { names: isolate(list(facilitators)) })) : null),
      when ? h("p", { class: "next-session" }, tx("groups.next", { time: h("time", { dateTime: g.next_session, text: when }) })) : null,
      waitlisted ? h("p", { class: "waitlist", text: t("groups.waitlist.position", { position: g.waitlist_position }) }) : null,
      h("div", { class: "row" }, buttons));
  }

  function render() {
    const mineSorted = [...mine.values()];
    fill(mineList, mineSorted.map((g) => card(g, "mine")));
    mineEmpty.hidden = mineSorted.length > 0;
    fitEmpty.hidden = fit === null || fit.length > 0;
    fill(fitList, (fit || []).map((g) => card(mine.get(g.group_id) ? { ...g, ...mine.get(g.group_id) } : g, "fit")));
    waitBox.hidden = !waiting;
    if (waiting) waitPos.textContent = t("groups.wait.position", { position: waiting.position || 1 });
    findBtn.disabled = Boolean(waiting);
  }

  // ---- frames out ----
  function currentProfile() {
    const problem = profileProblem();
    if (problem) { findError.textContent = t("groups.need_profile"); return null; }
    findError.textContent = "";
    return profile();
  }

  function listMine() {
    if (conn.send({ type: "list_groups" })) asked.push("mine");
  }

  function listFit() {
    const p = currentProfile();
    if (!p) return;
    if (!conn.send({ type: "list_groups", profile: p })) { findError.textContent = t("common.offline"); return; }
    asked.push("fit");
  }

  function findGroup() {
    const p = currentProfile();
    if (!p) return;
    if (!conn.send({ type: "find_group", profile: p })) { findError.textContent = t("common.offline"); return; }
    openedByMe.add("*find");
    findBtn.disabled = true;
  }

  function join(gid) {
    pendingJoin = gid;
    openedByMe.add(gid);
    if (!conn.send({ type: "join_group", group_id: gid })) { say(t("common.offline")); openedByMe.delete(gid); }
  }

  function leave(gid) {
    if (!conn.send({ type: "leave_group", group_id: gid })) say(t("common.offline"));
  }

  // ---- the chat ----
  function openGroup(gid) {
    const chat = chats.get(gid);
    if (chat && chat.ended) { show(gid); return; }
    join(gid);         // a member joining again is answered `joined`: the members, who is online, the pin
  }

  function show(gid) {
    const chat = chats.get(gid);
    if (!chat) return;
    open = gid;
    chat.unread = false;
    if (mine.get(gid)) mine.get(gid).unread = false;
    for (const [id, c] of chats) c.root.hidden = id !== gid;
    chatPanel.hidden = false;
    mineBox.hidden = true;
    findBox.hidden = true;
    create.node.hidden = true;
    onOpen?.(gid);
    render();
    if (visible) chat.root.querySelector("h2")?.setAttribute("tabindex", "-1");
    if (visible) chat.root.querySelector("h2")?.focus();
  }

  function closeChat(focusList) {
    open = null;
    for (const c of chats.values()) c.root.hidden = true;
    chatPanel.hidden = true;
    mineBox.hidden = false;
    findBox.hidden = role === "moderator";
    create.node.hidden = !create.allowed();
    render();
    if (focusList) mineBox.querySelector("h2")?.setAttribute("tabindex", "-1");
    if (focusList) mineBox.querySelector("h2")?.focus();
  }

  function chatFor(frame) {
    const gid = frame.group_id;
    const conv = { conversation_id: gid, epoch: frame.epoch, group: frame.group || mine.get(gid) || {}, members: frame.members || [],
      pinned: frame.pinned || null, name: frame.name || me?.name, seq: frame.seq, state: frame.group?.state };
    let chat = chats.get(gid);
    if (chat && !chat.ended) { chat.refresh(conv); return chat; }
    if (chat) { chat.destroy(); chats.delete(gid); }
    chat = new GroupChat(conn, conv, me, { label, limits: me?.limits || {},
      onUnread: () => { if (open !== gid) { chat.unread = true; render(); } } });
    chat.root.hidden = true;
    chats.set(gid, chat);
    chatPanel.append(chat.root);
    return chat;
  }

  function drop(gid) {
    const chat = chats.get(gid);
    if (chat) { chat.destroy(); chats.delete(gid); }
    mine.delete(gid);
    conn.forget?.(gid);
    if (open === gid) closeChat(true);
  }

  // ---- frames in ----
  conn.on("welcome", (f) => {
    me = { ...f.user, limits: f.limits || {} };
    asked = [];
    create.setAllowed(f.user.role === "moderator" || f.user.facilitator === true);
    if (waiting) { waiting = null; say(t("groups.wait.ended")); }
    for (const g of f.groups || []) {
      const known = mine.get(g.group_id) || {};
      mine.set(g.group_id, { ...known, group_id: g.group_id, title: g.title ?? known.title, state: g.state ?? known.state, joined: true });
    }
    listMine();
    // the open chats: fetch their members, who is online and the pin again (joining again answers joined)
    for (const [gid, chat] of chats) if (!chat.ended) conn.send({ type: "join_group", group_id: gid });
    render();
  });

  conn.on("groups", (f) => {
    const kind = f.ref === "find_group" ? "find" : (asked.shift() || "fit");
    for (const g of f.groups || []) {
      if (g.joined || g.waitlist_position) mine.set(g.group_id, { ...(mine.get(g.group_id) || {}), ...g });
      else if (mine.has(g.group_id) && kind === "mine") mine.delete(g.group_id);
    }
    if (kind === "mine") {
      const listed = new Set((f.groups || []).map((g) => g.group_id));
      for (const gid of [...mine.keys()]) if (!listed.has(gid) && !chats.has(gid)) mine.delete(gid);
    } else if (kind === "fit") {
      fit = f.groups || [];
    } else {
      fit = f.groups || [];
      findBtn.disabled = Boolean(waiting);
    }
    render();
  });

  conn.on("queued", (f) => {
    if (f.for !== "group") return;
    waiting = { position: f.position };
    openedByMe.add("*find");
    render();
    announce(t("groups.wait.position", { position: f.position || 1 }));
  });

  conn.on("cancelled", (f) => {
    if (f.for !== "group") return;
    waiting = null;
    openedByMe.delete("*find");
    say(t("groups.wait.cancelled"));
    render();
  });

  conn.on("joined", (f) => {
    const gid = f.group_id;
    const summary = { ...(mine.get(gid) || {}), ...(f.group || {}), group_id: gid, joined: true, waitlist_position: null };
    mine.set(gid, summary);
    if (fit) fit = fit.map((g) => (g.group_id === gid ? { ...g, ...summary } : g));
    const askedFor = openedByMe.has(gid) || openedByMe.has("*find");
    openedByMe.delete(gid);
    openedByMe.delete("*find");
    if (pendingJoin === gid) pendingJoin = null;
    const wasKnown = chats.has(gid);
    waiting = null;
    findBtn.disabled = false;
    chatFor(f);
    render();
    if (askedFor || (!wasKnown && !open && visible)) show(gid);
    if (!wasKnown && !askedFor) say(t("groups.joined.auto", { title: summary.title || t("groups.group") }));
    else if (!wasKnown) announce(t("groups.joined.now", { title: summary.title || t("groups.group") }));
  });

  conn.on("left", (f) => {
    const g = mine.get(f.group_id);
    const title = g?.title || t("groups.group");
    if (f.waitlisted) {
      mine.delete(f.group_id);
      say(t("groups.waitlist.left", { title }));
    } else {
      drop(f.group_id);
      say(t("groups.left", { title }));
    }
    if (fit) fit = fit.map((x) => (x.group_id === f.group_id ? { ...x, joined: false, waitlist_position: null,
      members: f.waitlisted || typeof x.members !== "number" ? x.members : Math.max(0, x.members - 1) } : x));
    render();
  });

  conn.on("removed", (f) => {
    const g = mine.get(f.group_id);
    if (g) { g.joined = false; g.state = g.state || "open"; mine.delete(f.group_id); }
    conn.forget?.(f.group_id);
    if (open !== f.group_id) { const chat = chats.get(f.group_id); if (chat) { chat.destroy(); chats.delete(f.group_id); } }
    say(t("groups.removed.note", { title: g?.title || t("groups.group") }));
    render();
  });

  conn.on("group_closed", (f) => {
    const g = mine.get(f.group_id);
    if (g) g.state = "closed";
    render();
  });

  conn.on("group", (f) => {
    const g = f.group || {};
    if (!g.group_id) return;
    mine.set(g.group_id, { ...g, joined: true });
    create.done(g);
    say(t("groups.created", { title: g.title || t("groups.group") }));
    openGroup(g.group_id);
  });

  conn.on("message", (f) => {
    if (mine.has(f.conversation_id) && !chats.has(f.conversation_id)) {
      const g = mine.get(f.conversation_id);
      g.unread = true;
    }
  });

  conn.on("error", (f) => {
    if (f.ref === "join_group" || f.ref === "find_group" || f.ref === "list_groups" || f.ref === "leave_group" || f.ref === "cancel_find_group") {
      const gid = f.group_id || pendingJoin;
      if (f.ref === "find_group") { openedByMe.delete("*find"); findBtn.disabled = Boolean(waiting); }
      if (f.ref === "join_group" && gid) openedByMe.delete(gid);
      if (f.code === "group_full" && gid) {
        const g = mine.get(gid) || (fit || []).find((x) => x.group_id === gid) || { group_id: gid };
        mine.set(gid, { ...g, joined: false, waitlist_position: f.waitlist_position });
        say(t("groups.full.note", { title: g.title || t("groups.group"), position: f.waitlist_position }));
      } else if (f.code === "capacity") {
        say(t("groups.limit", { count: f.limit || 5 }));
      } else if (f.code === "group_closed") {
        say(t("groups.closed.join"));
      } else if (f.code === "forbidden" && f.ref === "join_group") {
        say(t("groups.forbidden.join"));
      } else if (f.code === "not_found" && f.ref === "join_group") {
        say(t("groups.gone"));
        if (gid) { mine.delete(gid); if (fit) fit = fit.filter((x) => x.group_id !== gid); }
      } else {
        findError.textContent = f.message || t("common.error");
      }
      render();
    }
    if (f.ref === "create_group") create.failed(f);
  });

  // ---- creating a group ----
  function createForm() {
    let allowed = false;
    const titleId = nextId("create");
    const error = h("p", { class: "error-note", role: "alert" });
    const kindName = nextId("kind");
    const kinds = [["diagnosis", t("groups.create.kind.diagnosis")], ["side_effect", t("groups.create.kind.side_effect")]].map(([value, text], i) => {
      const input = h("input", { type: "radio", name: kindName, value, id: nextId("kind"), checked: i === 0 });
      return { input, row: h("div", { class: "check" }, input, h("label", { for: input.id, text })) };
    });
    const code = h("select", { id: nextId("topic") });
    const fillCodes = () => {
      const kind = kinds.find((k) => k.input.checked)?.input.value || "diagnosis";
      fill(code, (vocabulary[kind === "diagnosis" ? "diagnoses" : "side_effects"] || []).map((item) =>
        h("option", { value: item.code, text: item.label, lang: item.fallback ? "en" : null })));
    };
    for (const k of kinds) k.input.addEventListener("change", fillCodes);
    fillCodes();
    const mineLang = currentLocale().slice(0, 2);
    const language = h("select", { id: nextId("glang") }, (vocabulary.languages || []).map((l) =>
      h("option", { value: l.code, text: l.label, lang: l.fallback ? "en" : null, selected: l.code === mineLang })));
    const title = h("input", { type: "text", id: nextId("gtitle"), maxLength: 80, required: true });
    const description = h("textarea", { id: nextId("gdesc"), rows: 3, maxLength: 500 });
    const capacity = h("input", { type: "number", id: nextId("gcap"), min: 3, max: 30, value: 8, step: 1, required: true, inputMode: "numeric" });
    const weekly = h("input", { type: "checkbox", id: nextId("weekly") });
    const weekday = h("select", { id: nextId("wd") }, weekdays().map(([d, name]) => h("option", { value: String(d), text: name })));
    const time = h("input", { type: "time", id: nextId("time"), value: "18:00", required: true });
    const tz = h("input", { type: "text", id: nextId("tz"), value: browserTimeZone(), spellcheck: false, autocomplete: "off" });
    const duration = h("select", { id: nextId("dur") }, DURATIONS.map((n) => h("option", { value: String(n), text: minutesText(n), selected: n === 60 })));
    const schedule = h("fieldset", { class: "schedule", hidden: true },
      h("legend", { text: t("groups.create.schedule") }),
      h("div", { class: "field" }, h("label", { for: weekday.id, text: t("groups.create.weekday") }), weekday),
      h("div", { class: "field" }, h("label", { for: time.id, text: t("groups.create.time") }), time),
      h("div", { class: "field" }, h("label", { for: tz.id, text: t("groups.create.tz") }),
        h("p", { class: "hint", id: `${tz.id}-hint`, text: t("groups.create.tz.hint") }), tz),
      h("div", { class: "field" }, h("label", { for: duration.id, text: t("groups.create.duration") }), duration));
    tz.setAttribute("aria-describedby", `${tz.id}-hint`);
    weekly.addEventListener("change", () => { schedule.hidden = !weekly.checked; });
    const submit = h("button", { type: "submit", class: "primary", text: t("groups.create.submit") });
    const form = h("form", { class: "create-group-form" },
      h("fieldset", {}, h("legend", { text: t("groups.create.kind") }), kinds.map((k) => k.row)),
      h("div", { class: "field" }, h("label", { for: code.id, text: t("groups.create.topic") }), code),
      h("div", { class: "field" }, h("label", { for: language.id, text: t("groups.create.language") }), language),
      h("div", { class: "field" }, h("label", { for: title.id, text: t("groups.create.title") }), title),
      h("div", { class: "field" }, h("label", { for: description.id, text: t("groups.create.description") }), description),
      h("div", { class: "field" }, h("label", { for: capacity.id, text: t("groups.create.capacity") }),
        h("p", { class: "hint", id: `${capacity.id}-hint`, text: t("groups.create.capacity.hint", { min: 3, max: 30 }) }), capacity),
      h("div", { class: "check" }, weekly, h("label", { for: weekly.id, text: t("groups.create.weekly") })),
      schedule, error, submit);
    capacity.setAttribute("aria-describedby", `${capacity.id}-hint`);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const cap = Number(capacity.value);
      if (!title.value.trim()) { error.textContent = t("groups.create.need_title"); title.focus(); return; }
      if (!Number.isInteger(cap) || cap < 3 || cap > 30) { error.textContent = t("groups.create.capacity.hint", { min: 3, max: 30 }); capacity.focus(); return; }
      const frame = { type: "create_group", topic: { kind: kinds.find((k) => k.input.checked).input.value, code: code.value },
        language: language.value, title: title.value.trim(), description: description.value.trim(), capacity: cap };
      if (weekly.checked) {
        if (!/^\d\d:\d\d$/.test(time.value)) { error.textContent = t("groups.create.need_time"); time.focus(); return; }
        frame.schedule = { weekday: Number(weekday.value), time: time.value, tz: tz.value.trim() || browserTimeZone(), duration_min: Number(duration.value) };
      }
      if (!conn.send(frame)) { error.textContent = t("common.offline"); return; }
      error.textContent = "";
      submit.disabled = true;
    });
    const node = h("details", { class: "card create-group", hidden: true },
      h("summary", { id: titleId, text: t("groups.create") }),
      h("p", { class: "hint", text: t("groups.create.lead") }), form);
    return {
      node,
      allowed: () => allowed,
      setAllowed(yes) { allowed = yes; node.hidden = !yes || Boolean(open); },
      done() { submit.disabled = false; title.value = ""; description.value = ""; node.open = false; },
      failed(f) { submit.disabled = false; error.textContent = f.message || t("common.error"); },
    };
  }

  render();
  return {
    node,
    shown(yes) {
      visible = yes;
      if (yes && !open && mine.size && ![...mine.values()].some((g) => g.title)) listMine();
    },
    get open() { return open; },
  };
}

/**
 * "One-on-one | Groups": two views of a patient's or survivor's page.  Buttons with aria-pressed (the
 * chats keep the tab pattern for themselves); a view that has news while hidden gets a "new" badge.
 * views: [{key, label, node, onShow?}] → {node, select(key), badge(key), current}.
 */
export function viewSwitch(views) {
  let current = views[0].key;
  const buttons = new Map();
  const nav = h("nav", { class: "view-switch", "aria-label": t("views.label") }, views.map((v) => {
    const btn = h("button", { type: "button", class: "view-btn", "data-view": v.key, "aria-pressed": "false" },
      h("span", { text: v.label }), h("span", { class: "badge", hidden: true, text: t("chat.new") }));
    btn.addEventListener("click", () => api.select(v.key, true));
    buttons.set(v.key, btn);
    return btn;
  }));
  const api = {
    node: nav,
    get current() { return current; },
    select(key, byPerson = false) {
      current = key;
      for (const v of views) {
        const on = v.key === key;
        v.node.hidden = !on;
        buttons.get(v.key).setAttribute("aria-pressed", String(on));
        if (on) buttons.get(v.key).querySelector(".badge").hidden = true;
        v.onShow?.(on, byPerson);
      }
    },
    badge(key) {
      if (key !== current) buttons.get(key).querySelector(".badge").hidden = false;
    },
  };
  api.select(current);
  return api;
}
