// The moderator's page: the live flag feed, watching one flagged conversation, actions, the audit log.
//
// Moderators can only open conversations that have an unresolved flag; the server enforces it and
// writes every look and every action to the audit log.  Watching is silent to the participants.

import { ChatView } from "./chat.js";
import { groupsView } from "./groups.js";
import { ago, dateTime, t, tx } from "./i18n.js";
import { announce, confirmButton, fill, h, isolate, nextId } from "./ui.js";

const CATEGORY = () => ({
  crisis: t("mod.category.crisis"),
  contact_info: t("mod.category.contact_info"),
  abuse: t("mod.category.abuse"),
  medical_advice: t("mod.category.medical_advice"),
  report: t("mod.category.report"),
  review: t("mod.category.review"),
});
const category = (c) => CATEGORY()[c] || c;
const OUTCOMES = () => [["", t("mod.outcome.none")], ["true_alarm", t("mod.outcome.true")], ["false_alarm", t("mod.outcome.false")]];
const SEVERITY = () => ({ high: t("mod.severity.high"), medium: t("mod.severity.medium"), low: t("mod.severity.low") });
const severity = (s) => SEVERITY()[s] || s;

function sourceTag(flag) {
  if (flag.source === "model") {
    const score = typeof flag.score === "number"
      ? ` ${new Intl.NumberFormat(document.documentElement.lang, { style: "percent" }).format(Math.round(flag.score * 100) / 100)}` : "";
    return h("span", { class: "pill source", title: t("mod.source.model.title"), text: `${t("mod.source.model")}${score}` });
  }
  if (flag.source === "rules") return h("span", { class: "pill source", title: t("mod.source.rule.title"), text: t("mod.source.rule") });
  return null;
}
const SEVERITY_RANK = { high: 0, medium: 1, low: 2 };
const STATUS = () => ({ open: t("mod.status.open"), acknowledged: t("mod.status.acknowledged"), resolved: t("mod.status.resolved") });

function byReviewOrder(a, b) {
  return (Number(b.priority) - Number(a.priority))
    || ((SEVERITY_RANK[a.severity] ?? 1) - (SEVERITY_RANK[b.severity] ?? 1))
    || (a.ts - b.ts);
}

function tabs(sections) {
  const list = h("div", { class: "tabs", role: "tablist", "aria-label": t("mod.tabs") });
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
    const forward = (event.key === "ArrowRight") !== (document.documentElement.dir === "rtl");
    const next = (i + (forward ? 1 : buttons.length - 1)) % buttons.length;
    select(next);
    buttons[next].focus();
  });
  list.append(...buttons);
  select(0);
  return { list, panels, select };
}

export function moderatorPage(root, conn, { token, vocabulary, label }) {
  const flags = new Map();          // flag_id -> flag frame
  let watching = null;              // {cid, view, node}

  // ---- the feed ----
  const count = h("span", { class: "count", text: "" });
  const feed = h("ol", { class: "flag-feed", "aria-live": "polite", "aria-label": t("mod.feed.title") });
  const empty = h("p", { class: "hint", text: t("mod.feed.empty") });
  const behind = h("p", { class: "notice warn screening-behind", role: "status", hidden: true });
  const feedPanel = h("section", { class: "card feed", "aria-labelledby": "feed-title" },
    h("h2", { id: "feed-title" }, t("mod.feed.title"), " ", count), behind, empty, feed);

  function screening(frame) {
    behind.hidden = !frame.behind;
    if (frame.behind) {
      behind.textContent = t("mod.screening.behind", { count: frame.waiting, seconds: Math.round(frame.oldest_age_s) });
    }
  }

  function flagItem(flag) {
    const resolveText = h("input", { type: "text", maxLength: 1000, placeholder: t("mod.resolution.placeholder"), "aria-label": t("mod.resolution") });
    const outcome = h("select", { "aria-label": t("mod.outcome"), class: "outcome" },
      OUTCOMES().map(([value, label]) => h("option", { value, text: label })));
    const resolveForm = h("form", { class: "inline-form" }, resolveText, outcome,
      h("button", { type: "submit", class: "secondary", text: t("mod.resolve") }));
    resolveForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const frame = { type: "resolve", flag_id: flag.flag_id, resolution: resolveText.value.trim() || "reviewed" };
      if (outcome.value) frame.outcome = outcome.value;
      conn.send(frame);
    });
    return h("li", { class: `flag sev-${flag.severity}${flag.group ? " group-flag" : ""}`, "data-flag": flag.flag_id, "data-conversation": flag.conversation_id },
      h("p", { class: "flag-head" },
        h("span", { class: `pill sev-${flag.severity}`, text: severity(flag.severity) }),
        h("strong", { class: "category", text: category(flag.category) }),
        sourceTag(flag),
        flag.priority ? h("span", { class: "pill priority", text: t("mod.priority") }) : null,
        flag.group ? h("span", { class: "pill group", text: t("mod.group") }) : null,
        h("span", { class: "status-tag", text: STATUS()[flag.status] || STATUS().open }),
        h("time", { class: "age", dateTime: new Date(flag.ts).toISOString(), "data-ts": String(flag.ts), text: ago(flag.ts) })),
      h("blockquote", { class: "excerpt", dir: "auto", text: flag.excerpt || t("mod.no_text") }),
      flag.reason ? h("p", { class: "hint" }, tx("mod.reason_given", { reason: h("bdi", { text: flag.reason }) })) : null,
      h("div", { class: "row" },
        h("button", { type: "button", class: "primary", text: t("mod.open"), on: { click: () => watch(flag.conversation_id, Boolean(flag.group)) } }),
        resolveForm));
  }

  function renderFeed() {
    const sorted = [...flags.values()].sort(byReviewOrder);
    fill(feed, sorted.map(flagItem));
    count.textContent = t("mod.count", { count: sorted.length });
    empty.hidden = sorted.length > 0;
  }

  setInterval(() => {
    for (const t of feed.querySelectorAll("time.age")) t.textContent = ago(Number(t.dataset.ts));
  }, 15000);

  // ---- watching one conversation ----
  const watchPanel = h("section", { class: "card watch", "aria-label": t("mod.watch.label"), hidden: true });

  function watch(cid, group = false) {
    if (watching?.cid === cid) { watchPanel.scrollIntoView?.({ block: "start" }); return; }
    stopWatching(true);
    conn.send({ type: "watch", conversation_id: cid });
    const view = new ChatView(conn, { conversation_id: cid, peer: {} }, conn.user, { readonly: true, label: (k, c) => c });
    watching = { cid, view, group, people: h("div", { class: "people" }), flagsBox: h("ul", { class: "conv-flags" }) };
    fill(watchPanel,
      h("div", { class: "watch-head" }, watching.people,
        h("button", { type: "button", class: "secondary", text: t("mod.watch.stop"), on: { click: () => stopWatching(false) } })),
      h("p", { class: "hint", text: t("mod.watch.silent") }),
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
      h("label", { for: notice.id, text: t("mod.notice.label") }), notice,
      h("button", { type: "submit", class: "primary", text: t("mod.notice.post") }));
    noticeForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = notice.value.trim();
      if (text && conn.send({ type: "notice", conversation_id: cid, text, client_id: crypto.randomUUID() })) notice.value = "";
    });
    const reason = h("input", { type: "text", maxLength: 1000, id: nextId("why"), placeholder: t("mod.reason.placeholder") });
    const group = watching.group;
    const end = confirmButton(group ? t("mod.group.close") : t("mod.end"), group ? t("mod.group.close.ask") : t("mod.end.ask"),
      () => conn.send({ type: "moderator_end", conversation_id: cid, reason: reason.value.trim() }), { cls: "danger", yes: group ? t("groups.tools.close.yes") : t("chat.end") });
    watching.suspendBox = h("div", { class: "row suspend" });
    return h("div", { class: "mod-actions" }, noticeForm,
      h("div", { class: "field" }, h("label", { for: reason.id, text: t("mod.reason") }), reason),
      h("div", { class: "row" }, end, watching.suspendBox),
      watching.result = h("p", { class: "hint", role: "status" }));
  }

  function suspendButtons(participants) {
    if (!watching?.suspendBox) return;
    const reasonOf = () => watchPanel.querySelector(".mod-actions input[type=text]")?.value.trim() || t("mod.suspend.default_reason");
    fill(watching.suspendBox, ["patient", "survivor"].filter((r) => participants?.[r]?.id).map((role) => {
      const person = participants[role];
      const roleName = role === "patient" ? t("role.patient") : t("role.survivor");
      return confirmButton(tx("mod.suspend.who", { name: isolate(person.name) }),
        tx("mod.suspend.ask", { name: isolate(person.name), role: roleName }),
        () => conn.send({ type: "suspend", user_id: person.id, reason: reasonOf() }), { yes: t("mod.suspend"), cls: "secondary" });
    }));
  }

  function convFlag(f) {
    return h("li", { class: `sev-${f.severity}`, "data-flag": f.flag_id },
      h("span", { class: `pill sev-${f.severity}`, text: severity(f.severity) }),
      h("span", { text: t("mod.flag.message", { category: category(f.category), seq: f.seq }) }),
      h("span", { class: "status-tag", text: STATUS()[f.status] || STATUS().open }));
  }

  /** A watched group: its members (names, roles, user ids) from the history frame, each with Suspend. */
  function watchGroup(frame) {
    const members = frame.members || [];
    const roleName = (r) => ({ patient: t("role.patient"), survivor: t("role.survivor"), moderator: t("role.moderator") }[r] || r || "");
    fill(watching.people,
      h("h2", {}, frame.group?.title ? tx("mod.watch.group", { title: h("bdi", { text: frame.group.title }) }) : t("mod.watch.group.plain")),
      h("h3", { class: "members-title", text: t("mod.watch.members", { count: members.length }) }),
      h("ul", { class: "member-list watched" }, members.map((m) => h("li", { class: "member", "data-name": m.name },
        h("strong", {}, isolate(m.name || t("chat.deleted_user"))),
        h("span", { class: "hint", text: ` · ${m.facilitator ? t("groups.member.facilitator_role", { role: roleName(m.role) }) : roleName(m.role)}` }),
        typeof m.online === "boolean" ? h("span", { class: `presence ${m.online ? "on" : "off"}`, text: m.online ? t("groups.member.online") : t("groups.member.away") }) : null))));
    fill(watching.flagsBox, (frame.flags || []).map(convFlag));
    if (!watching.suspendBox) return;
    const reasonOf = () => watchPanel.querySelector(".mod-actions input[type=text]")?.value.trim() || t("mod.suspend.default_reason");
    fill(watching.suspendBox, members.filter((m) => m.id && m.role !== "moderator").map((m) => confirmButton(
      tx("mod.suspend.who", { name: isolate(m.name) }),
      tx("mod.suspend.ask", { name: isolate(m.name), role: roleName(m.role) }),
      () => conn.send({ type: "suspend", user_id: m.id, reason: reasonOf() }), { yes: t("mod.suspend"), cls: "secondary" })));
  }

  function watchHistory(frame) {
    if (!watching || frame.conversation_id !== watching.cid || !frame.watching) return;
    if (Array.isArray(frame.members) || frame.group) { watching.group = true; watchGroup(frame); return; }
    const p = frame.participants || {};
    fill(watching.people,
      h("h2", {}, tx("mod.watch.between", {
        patient: h("strong", {}, isolate(p.patient?.name || t("role.patient"))),
        survivor: h("strong", {}, isolate(p.survivor?.name || t("role.survivor"))),
      })));
    fill(watching.flagsBox, (frame.flags || []).map(convFlag));
    suspendButtons(p);
  }

  // ---- the audit log ----
  const auditBody = h("tbody");
  const auditStatus = h("p", { class: "hint", role: "status" });
  const auditPanel = h("section", { class: "card audit", "aria-labelledby": "audit-title" },
    h("div", { class: "row spread" }, h("h2", { id: "audit-title", text: t("mod.audit") }),
      h("button", { type: "button", class: "secondary", text: t("mod.audit.refresh"), on: { click: () => loadAudit() } })),
    auditStatus,
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, [t("mod.audit.when"), t("mod.audit.who"), t("mod.audit.action"), t("mod.audit.subject"), t("mod.audit.detail")].map((t) => h("th", { scope: "col", text: t })))),
      auditBody)));

  async function loadAudit() {
    auditStatus.textContent = t("mod.audit.loading");
    const entries = [];
    let after = "";
    try {
      for (let page = 0; page < 10; page += 1) {
        const res = await fetch(`/api/audit?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ""}`,
          { headers: { Authorization: `Bearer ${token()}` }, cache: "no-store" });
        if (!res.ok) throw new Error(String(res.status));
        const body = await res.json();
        entries.push(...body.entries);
        if (!body.next) break;
        after = body.next;
      }
    } catch (err) {
      auditStatus.textContent = t("mod.audit.failed", { reason: err.message });
      return;
    }
    entries.reverse();
    fill(auditBody, entries.map((e) => h("tr", {},
      h("td", {}, h("time", { dateTime: new Date(e.ts).toISOString(), text: dateTime(e.ts) })),
      h("td", { dir: "auto", text: e.who_name || e.who }),
      h("td", { text: e.action }),
      h("td", { class: "mono", text: e.conversation_id || e.user_id || e.flag_id || "" }),
      h("td", { text: e.detail || "" }))));
    auditStatus.textContent = entries.length ? t("mod.audit.count", { count: entries.length }) : t("mod.audit.empty");
  }

  // ---- groups: moderators create groups and may use the facilitator tools in any group they are in ----
  const groups = groupsView(conn, { vocabulary: vocabulary || {}, label: label || ((k, c) => c), role: "moderator" });
  const groupsPanel = h("section", { class: "groups-tab", "aria-label": t("views.groups") }, groups.node);

  const { list, panels } = tabs([[t("mod.flags"), h("div", { class: "mod-grid" }, feedPanel, watchPanel)], [t("mod.audit"), auditPanel],
    [t("views.groups"), groupsPanel]]);
  fill(root, list, ...panels);
  list.querySelectorAll("[role=tab]")[1].addEventListener("click", () => loadAudit());
  list.querySelectorAll("[role=tab]")[2].addEventListener("click", () => groups.shown(true));

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
    if (!known) announce(t("mod.flag.new", { severity: severity(f.severity), category: category(f.category) }));
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
    if (item) item.textContent = STATUS().resolved;
  });
  conn.on("history", watchHistory);
  conn.on("watch_ended", (f) => {
    if (watching?.cid === f.conversation_id) {
      watching.result.textContent = t("mod.watch.closed");
      setTimeout(() => { if (watching?.cid === f.conversation_id) stopWatching(false); }, 4000);
    }
  });
  conn.on("done", (f) => {
    if (!watching) return;
    const text = { moderator_end: t("mod.done.end"), suspend: t("mod.done.suspend"), resolve: t("mod.done.resolve") }[f.ref];
    if (text) watching.result.textContent = text;
  });
  conn.on("error", (f) => {
    // errors about the watched conversation show in its transcript; the rest (suspend, resolve) here
    if (watching && !f.conversation_id && ["suspend", "resolve"].includes(f.ref)) {
      watching.result.textContent = f.message;
    }
  });
}
