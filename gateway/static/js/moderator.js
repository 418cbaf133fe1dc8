// The moderator's page: the live flag feed, watching one flagged conversation, actions, the audit log.
//
// Moderators can only open conversations that have an unresolved flag; the server enforces it and
// writes every look and every action to the audit log.  Watching is silent to the participants.

import { ChatView } from "./chat.js";
import { ago, announce, clock, confirmButton, fill, h, isolate, nextId } from "./ui.js";

const CATEGORY = {
  crisis: "Crisis",
  contact_info: "Contact details",
  abuse: "Abuse",
  medical_advice: "Medical advice",
  report: "Report",
  review: "Possible crisis (uncertain)",
};
const OUTCOMES = [["", "Alarm was… (optional)"], ["true_alarm", "A true alarm"], ["false_alarm", "A false alarm"]];

function sourceTag(flag) {
  if (flag.source === "model") {
    const score = typeof flag.score === "number" ? ` ${Math.round(flag.score * 100)}%` : "";
    return h("span", { class: "pill source", title: "Raised by the screening model", text: `model${score}` });
  }
  if (flag.source === "rules") return h("span", { class: "pill source", title: "Raised by a phrase rule", text: "rule" });
  return null;
}
const SEVERITY_RANK = { high: 0, medium: 1, low: 2 };
const STATUS = { open: "open", acknowledged: "being reviewed", resolved: "resolved" };

function byReviewOrder(a, b) {
  return (Number(b.priority) - Number(a.priority))
    || ((SEVERITY_RANK[a.severity] ?? 1) - (SEVERITY_RANK[b.severity] ?? 1))
    || (a.ts - b.ts);
}

function tabs(sections) {
  const list = h("div", { class: "tabs", role: "tablist", "aria-label": "Moderation" });
  const panels = [];
  const buttons = sections.map(([label, panel], i) => {
    const tab = h("button", { type: "button", role: "tab", class: "tab", id: nextId("mtab"), "aria-selected": String(i === 0) }, label);
    panel.id = nextId("mpanel");
    panel.setAttribute("role", "tabpanel");
    panel.setAttribute("aria-labelledby", tab.id);
    tab.setAttribute("aria-controls", panel.id);
    panel.hidden = i !== 0;
    panels.push(panel);
    return tab;
  });
  const select = (i) => buttons.forEach((b, j) => {
    b.setAttribute("aria-selected", String(i === j));
    b.tabIndex = i === j ? 0 : -1;
    panels[j].hidden = i !== j;
  });
  buttons.forEach((b, i) => b.addEventListener("click", () => select(i)));
  list.addEventListener("keydown", (event) => {
    const i = buttons.indexOf(document.activeElement);
    if (i < 0 || !["ArrowLeft", "ArrowRight"].includes(event.key)) return;
    const next = (i + (event.key === "ArrowRight" ? 1 : buttons.length - 1)) % buttons.length;
    select(next);
    buttons[next].focus();
  });
  list.append(...buttons);
  select(0);
  return { list, panels, select };
}

export function moderatorPage(root, conn, { token }) {
  const flags = new Map();          // flag_id -> flag frame
  let watching = null;              // {cid, view, node}

  // ---- the feed ----
  const count = h("span", { class: "count", text: "" });
  const feed = h("ol", { class: "flag-feed", "aria-live": "polite", "aria-label": "Flags needing review" });
  const empty = h("p", { class: "hint", text: "No open flags. Flags appear here the moment a risky message is sent or someone reports a chat." });
  const behind = h("p", { class: "notice warn screening-behind", role: "status", hidden: true });
  const feedPanel = h("section", { class: "card feed", "aria-labelledby": "feed-title" },
    h("h2", { id: "feed-title" }, "Flags needing review ", count), behind, empty, feed);

  function screening(frame) {
    behind.hidden = !frame.behind;
    if (frame.behind) {
      behind.textContent = `Screening is behind: ${frame.waiting} message(s) wait for the model, the oldest for `
        + `${Math.round(frame.oldest_age_s)} s. Model flags may arrive late; the phrase rules still flag at once.`;
    }
  }

  function flagItem(flag) {
    const resolveText = h("input", { type: "text", maxLength: 1000, placeholder: "How was this resolved?", "aria-label": "Resolution" });
    const outcome = h("select", { "aria-label": "Was this a true or a false alarm?", class: "outcome" },
      OUTCOMES.map(([value, label]) => h("option", { value, text: label })));
    const resolveForm = h("form", { class: "inline-form" }, resolveText, outcome,
      h("button", { type: "submit", class: "secondary", text: "Resolve" }));
    resolveForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const frame = { type: "resolve", flag_id: flag.flag_id, resolution: resolveText.value.trim() || "reviewed" };
      if (outcome.value) frame.outcome = outcome.value;
      conn.send(frame);
    });
    return h("li", { class: `flag sev-${flag.severity}`, "data-flag": flag.flag_id, "data-conversation": flag.conversation_id },
      h("p", { class: "flag-head" },
        h("span", { class: `pill sev-${flag.severity}`, text: flag.severity }),
        h("strong", { class: "category", text: CATEGORY[flag.category] || flag.category }),
        sourceTag(flag),
        flag.priority ? h("span", { class: "pill priority", text: "priority" }) : null,
        h("span", { class: "status-tag", text: STATUS[flag.status] || "open" }),
        h("time", { class: "age", dateTime: new Date(flag.ts).toISOString(), "data-ts": String(flag.ts), text: ago(flag.ts) })),
      h("blockquote", { class: "excerpt", text: flag.excerpt || "(no text)" }),
      flag.reason ? h("p", { class: "hint", text: `Reason given: ${flag.reason}` }) : null,
      h("div", { class: "row" },
        h("button", { type: "button", class: "primary", text: "Open conversation", on: { click: () => watch(flag.conversation_id) } }),
        resolveForm));
  }

  function renderFeed() {
    const sorted = [...flags.values()].sort(byReviewOrder);
    fill(feed, sorted.map(flagItem));
    count.textContent = `(${sorted.length})`;
    empty.hidden = sorted.length > 0;
  }

  setInterval(() => {
    for (const t of feed.querySelectorAll("time.age")) t.textContent = ago(Number(t.dataset.ts));
  }, 15000);

  // ---- watching one conversation ----
  const watchPanel = h("section", { class: "card watch", "aria-label": "Watched conversation", hidden: true });

  function watch(cid) {
    if (watching?.cid === cid) { watchPanel.scrollIntoView?.({ block: "start" }); return; }
    stopWatching(true);
    conn.send({ type: "watch", conversation_id: cid });
    const view = new ChatView(conn, { conversation_id: cid, peer: {} }, conn.user, { readonly: true, label: (k, c) => c });
    watching = { cid, view, people: h("div", { class: "people" }), flagsBox: h("ul", { class: "conv-flags" }) };
    fill(watchPanel,
      h("div", { class: "watch-head" }, watching.people,
        h("button", { type: "button", class: "secondary", text: "Stop watching", on: { click: () => stopWatching(false) } })),
      h("p", { class: "hint", text: "Watching is silent: the people in this chat are not told." }),
      watching.flagsBox, view.root, actions(cid));
    watchPanel.hidden = false;
    watchPanel.scrollIntoView?.({ block: "start" });
  }

  function stopWatching(silent) {
    if (!watching) return;
    conn.send({ type: "unwatch", conversation_id: watching.cid });
    watching.view.destroy();
    watching = null;
    fill(watchPanel);
    watchPanel.hidden = true;
    if (!silent) feedPanel.scrollIntoView?.({ block: "start" });
  }

  function actions(cid) {
    const notice = h("textarea", { rows: 2, maxLength: 4000, id: nextId("notice") });
    const noticeForm = h("form", { class: "notice-form" },
      h("label", { for: notice.id, text: "Post a notice both people will see" }), notice,
      h("button", { type: "submit", class: "primary", text: "Post notice" }));
    noticeForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = notice.value.trim();
      if (text && conn.send({ type: "notice", conversation_id: cid, text, client_id: crypto.randomUUID() })) notice.value = "";
    });
    const reason = h("input", { type: "text", maxLength: 1000, id: nextId("why"), placeholder: "Reason (kept in the audit log)" });
    const end = confirmButton("End this chat", "End it for both people?",
      () => conn.send({ type: "moderator_end", conversation_id: cid, reason: reason.value.trim() }), { cls: "danger", yes: "End chat" });
    watching.suspendBox = h("div", { class: "row suspend" });
    return h("div", { class: "mod-actions" }, noticeForm,
      h("div", { class: "field" }, h("label", { for: reason.id, text: "Reason for ending or suspending" }), reason),
      h("div", { class: "row" }, end, watching.suspendBox),
      watching.result = h("p", { class: "hint", role: "status" }));
  }

  function suspendButtons(participants) {
    if (!watching?.suspendBox) return;
    const reasonOf = () => watchPanel.querySelector(".mod-actions input[type=text]")?.value.trim() || "suspended by a moderator";
    fill(watching.suspendBox, ["patient", "survivor"].filter((r) => participants?.[r]?.id).map((role) => {
      const person = participants[role];
      return confirmButton(["Suspend ", isolate(person.name)],
        ["Suspend ", isolate(person.name), ` (${role})? They are disconnected and cannot be matched.`],
        () => conn.send({ type: "suspend", user_id: person.id, reason: reasonOf() }), { yes: "Suspend", cls: "secondary" });
    }));
  }

  function convFlag(f) {
    return h("li", { class: `sev-${f.severity}`, "data-flag": f.flag_id },
      h("span", { class: `pill sev-${f.severity}`, text: f.severity }),
      h("span", { text: `${CATEGORY[f.category] || f.category}, message ${f.seq}` }),
      h("span", { class: "status-tag", text: STATUS[f.status] || "open" }));
  }

  function watchHistory(frame) {
    if (!watching || frame.conversation_id !== watching.cid || !frame.watching) return;
    const p = frame.participants || {};
    fill(watching.people,
      h("h2", {}, "Conversation between ",
        h("strong", {}, isolate(p.patient?.name || "patient")), " (patient) and ",
        h("strong", {}, isolate(p.survivor?.name || "survivor")), " (survivor)"));
    fill(watching.flagsBox, (frame.flags || []).map(convFlag));
    suspendButtons(p);
  }

  // ---- the audit log ----
  const auditBody = h("tbody");
  const auditStatus = h("p", { class: "hint", role: "status" });
  const auditPanel = h("section", { class: "card audit", "aria-labelledby": "audit-title" },
    h("div", { class: "row spread" }, h("h2", { id: "audit-title", text: "Audit log" }),
      h("button", { type: "button", class: "secondary", text: "Refresh", on: { click: () => loadAudit() } })),
    auditStatus,
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["When", "Who", "Action", "Conversation / user", "Detail"].map((t) => h("th", { scope: "col", text: t })))),
      auditBody)));

  async function loadAudit() {
    auditStatus.textContent = "Loading…";
    const entries = [];
    let after = "";
    try {
      for (let page = 0; page < 10; page += 1) {
        const res = await fetch(`/api/audit?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ""}`,
          { headers: { Authorization: `Bearer ${token()}` }, cache: "no-store" });
        if (!res.ok) throw new Error(`the server said ${res.status}`);
        const body = await res.json();
        entries.push(...body.entries);
        if (!body.next) break;
        after = body.next;
      }
    } catch (err) {
      auditStatus.textContent = `Could not load the audit log (${err.message}).`;
      return;
    }
    entries.reverse();
    fill(auditBody, entries.map((e) => h("tr", {},
      h("td", {}, h("time", { dateTime: new Date(e.ts).toISOString(), text: `${new Date(e.ts).toLocaleDateString()} ${clock(e.ts)}` })),
      h("td", { dir: "auto", text: e.who_name || e.who }),
      h("td", { text: e.action }),
      h("td", { class: "mono", text: e.conversation_id || e.user_id || e.flag_id || "" }),
      h("td", { text: e.detail || "" }))));
    auditStatus.textContent = entries.length ? `${entries.length} entries, newest first.` : "Nothing recorded yet.";
  }

  const { list, panels } = tabs([["Flags", h("div", { class: "mod-grid" }, feedPanel, watchPanel)], ["Audit log", auditPanel]]);
  fill(root, list, ...panels);
  list.querySelectorAll("[role=tab]")[1].addEventListener("click", () => loadAudit());

  // ---- frames ----
  conn.on("welcome", () => {
    conn.send({ type: "watch_flags" });
    if (watching) conn.send({ type: "watch", conversation_id: watching.cid });
  });
  conn.on("flags", (f) => {
    flags.clear();
    for (const flag of f.flags || []) flags.set(flag.flag_id, flag);
    renderFeed();
  });
  conn.on("flag", (f) => {
    const known = flags.has(f.flag_id);
    flags.set(f.flag_id, f);
    renderFeed();
    if (!known) announce(`New ${f.severity} flag: ${CATEGORY[f.category] || f.category}.`);
    if (!known && watching?.cid === f.conversation_id) watching.flagsBox.append(convFlag(f));
  });
  conn.on("screening", screening);
  conn.on("flag_acknowledged", (f) => {
    const flag = flags.get(f.flag_id);
    if (flag) { flag.status = "acknowledged"; renderFeed(); }
  });
  conn.on("flag_resolved", (f) => {
    if (flags.delete(f.flag_id)) renderFeed();
    const item = watching?.flagsBox.querySelector(`[data-flag="${CSS.escape(f.flag_id)}"] .status-tag`);
    if (item) item.textContent = STATUS.resolved;
  });
  conn.on("history", watchHistory);
  conn.on("watch_ended", (f) => {
    if (watching?.cid === f.conversation_id) {
      watching.result.textContent = "Every flag of this conversation is resolved, so it is closed to moderators again.";
      setTimeout(() => { if (watching?.cid === f.conversation_id) stopWatching(false); }, 4000);
    }
  });
  conn.on("done", (f) => {
    if (!watching) return;
    const text = { moderator_end: "The chat was ended.", suspend: "The user was suspended and disconnected.", resolve: "Flag resolved." }[f.ref];
    if (text) watching.result.textContent = text;
  });
  conn.on("error", (f) => {
    // errors about the watched conversation show in its transcript; the rest (suspend, resolve) here
    if (watching && !f.conversation_id && ["suspend", "resolve"].includes(f.ref)) {
      watching.result.textContent = f.message;
    }
  });
}
