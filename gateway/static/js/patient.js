// The patient's page: profile → "Talk now" → place in line (an honest wait) → chat → feedback;
// a request for a talk later; the people they keep in touch with.
//
// The wait says the truth (queued: fitting_available, estimated_wait_s, reason).  When nobody who fits
// is free or about to be (reason "nobody_fits_now"), the waiting screen says so and offers, in one
// place: widening the request (naming exactly what would be widened), a talk later, and the crisis
// lines for anyone who cannot wait.  Groups (groups.js) are a view of their own beside the one-on-one
// talks, found with the same profile.

import { ChatDeck } from "./chat.js";
import { groupsView, viewSwitch } from "./groups.js";
import { contactsPanel } from "./contacts.js";
import { profileFields, saveProfile, savedProfile } from "./profile.js";
import { lineItem, resourcesPanel } from "./resources.js";
import { dateTime, duration, hours, list, listOr, localeTag, t, tx } from "./i18n.js";
import { announce, fill, h, isolate, nextId } from "./ui.js";

const CANCEL_REASONS = () => ({
  grace_expired: t("patient.cancel.grace_expired"),
  suspended: t("patient.cancel.suspended"),
  declined: t("patient.cancel.declined"),
  contact_ended: t("patient.cancel.contact_ended"),
  unavailable: t("patient.cancel.unavailable"),
});
const REQUEST_KEY = "aftertalk.request";         // what the waiting request asked for (this tab): widen from it
const LATER_HOURS = [6, 24, 48, 72];
const NOTE_CHARS = 280;

function rememberRequest(request) {
  try { sessionStorage.setItem(REQUEST_KEY, JSON.stringify(request)); } catch { /* not remembered */ }
}
function rememberedRequest() {
  try { return JSON.parse(sessionStorage.getItem(REQUEST_KEY) || "null"); } catch { return null; }
}

/**
 * The ways to widen a waiting request, each naming exactly what changes: [{text, profile, hold}].
 * - held out for the same diagnosis, with side effects chosen: also peers who share a side effect;
 * - English not among the languages: also volunteers who chat in English.
 */
export function widenChoices(request, label) {
  const { profile, hold } = request;
  const out = [];
  if (hold && profile.side_effects?.length && profile.diagnoses?.length) {
    out.push({ text: t("wait.widen.side_effects", { topics: listOr(profile.side_effects.map((c) => label("side_effects", c))) }),
      profile, hold: 0 });
  }
  if (!profile.languages?.includes("en")) {
    out.push({ text: t("wait.widen.language", { language: label("languages", "en") }),
      profile: { ...profile, languages: [...(profile.languages || []), "en"] }, hold });
  }
  return out;
}

export function patientPage(root, conn, { vocabulary, label, alerts }) {
  let queued = false;
  let request = rememberedRequest();     // {profile, hold}: the waiting talk-now request as asked
  let later = null;                      // the pending talk-later request {request_id, expires_at, note, contact_id}
  let toLater = null;                    // asked for a talk later from the line: leave the line once it is made
  let again = null;                      // the contact a talk_again went to (for the words on screen)
  let lines = [];                        // crisis lines the server sent (resources frame, /api/crisis-lines)
  let linesLocale = "";                  // the language of those lines' words
  let askedLines = false;
  const resources = resourcesPanel(conn);

  // ---- profile and the big button ----
  const fields = profileFields(vocabulary, savedProfile("patient"), {
    diagnosis: t("profile.diagnosis"),
    sideEffects: t("patient.topics"),
    sideEffectsSummary: t("profile.topics.summary"),
    languages: t("profile.languages"),
    languagesSummary: t("profile.languages.summary"),
  });
  const hold = h("input", { type: "checkbox", id: "hold-dx" });
  const formError = h("p", { class: "error-note", role: "alert" });
  const talkNow = h("button", { type: "submit", class: "talk-now", text: t("patient.talk_now") });
  const form = h("form", { class: "card", "aria-labelledby": "profile-title" },
    h("h2", { id: "profile-title", text: t("patient.title") }),
    h("p", { class: "lead", text: t("patient.lead") }),
    fields.node,
    h("div", { class: "check" }, hold, h("label", { for: "hold-dx", text: t("patient.hold", { count: 2, minutes: 2 }) })),
    alerts.soundToggle(), formError, talkNow);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const problem = fields.check();
    formError.textContent = problem;
    if (problem) return;
    const profile = fields.value();
    saveProfile("patient", profile);
    const frame = { type: "talk_now", profile };
    if (hold.checked && profile.diagnoses.length) frame.prefer_same_diagnosis_s = 120;
    request = { profile, hold: frame.prefer_same_diagnosis_s || 0 };
    rememberRequest(request);
    again = null;
    if (!conn.send(frame)) formError.textContent = t("common.offline");
    else {
      formError.textContent = ""; talkNow.disabled = true; talkNow.textContent = t("patient.looking");
      alerts.askPermission();      // so a match while the tab is hidden can say so
    }
  });

  // ---- the line ----
  const position = h("p", { class: "position", id: "queue-position" });
  const wait = h("p", { class: "wait", id: "queue-wait" });
  const fitting = h("p", { class: "hint", id: "queue-fitting" });
  const cancel = h("button", { type: "button", class: "secondary", text: t("common.cancel"), on: { click: () => conn.send({ type: "cancel" }) } });
  const queueTitle = h("h2", { id: "queue-title", tabIndex: -1, text: t("patient.finding") });
  const keepOpen = h("p", { class: "hint", text: t("patient.keep_open") });

  // what a person can do when nobody who fits is free: in one place
  const widenList = h("div", { class: "row widen-choices" });
  const widenError = h("p", { class: "error-note", role: "alert" });
  const widenId = nextId("widen");
  const widenBox = h("section", { class: "option widen", "aria-labelledby": widenId },
    h("h3", { id: widenId, text: t("wait.widen.title") }),
    h("p", { class: "hint", text: t("wait.widen.hint") }), widenList, widenError);
  const laterBox = laterForm();
  const crisisBody = h("div");
  const crisisId = nextId("wait-crisis");
  const crisisBox = h("section", { class: "option crisis-now", "aria-labelledby": crisisId },
    h("h3", { id: crisisId, text: t("wait.crisis.title") }), crisisBody);
  const optionsId = nextId("options");
  const options = h("div", { class: "wait-options", hidden: true, "aria-labelledby": optionsId, role: "group" },
    h("h3", { id: optionsId, class: "visually-hidden", text: t("wait.options") }),
    widenBox, laterBox.node, crisisBox);
  const queue = h("section", { class: "card queue", "aria-labelledby": "queue-title", hidden: true },
    queueTitle,
    h("div", { class: "pulse", "aria-hidden": "true" }),
    h("div", { role: "status", "aria-live": "polite" }, position, wait, fitting),
    keepOpen, alerts.permissionNote,
    options,
    cancel);
  const note = h("p", { class: "note", role: "status", hidden: true });

  // ---- a talk later ----
  const laterStatus = h("p", { class: "hint", role: "status" });
  const laterCard = h("section", { class: "card later", id: "later", "aria-labelledby": "later-title", hidden: true });

  // ---- contacts ----
  const contacts = contactsPanel(conn, { role: "patient", onTalkAgain: (c) => { again = c; } });

  // ---- chats ----
  const deck = new ChatDeck(conn, { label, onChange: () => render(), onOpenedAway: openedAway });

  // ---- groups: a view of its own, found with the same profile ----
  const one = h("div", { class: "view-one" }, note, laterCard, contacts.node, form, queue, deck.root);
  const groups = groupsView(conn, { vocabulary, label, role: "patient", profile: () => fields.value(),
    profileProblem: () => fields.check(), onNews: () => views.badge("groups") });
  const views = viewSwitch([
    { key: "one", label: t("views.one"), node: one },
    { key: "groups", label: t("views.groups"), node: groups.node, onShow: (on) => groups.shown(on) },
  ]);
  fill(root, views.node, resources.node, one, groups.node);

  function profileWords(profile) {
    const topics = [...(profile.diagnoses || []).map((c) => label("diagnoses", c)),
      ...(profile.side_effects || []).map((c) => label("side_effects", c))];
    return { topics: listOr(topics), languages: listOr((profile.languages || []).map((c) => label("languages", c))) };
  }

  function laterForm() {
    const id = nextId("later-form");
    const within = h("select", { id: nextId("within") },
      LATER_HOURS.map((n) => h("option", { value: String(n), text: t("later.within", { hours: hours(n) }), selected: n === 24 })));
    const noteBox = h("textarea", { id: nextId("later-note"), rows: 2, maxLength: NOTE_CHARS, "aria-describedby": `${id}-hint` });
    const error = h("p", { class: "error-note", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary", text: t("later.ask") });
    const node = h("form", { class: "option later-form", "aria-labelledby": id },
      h("h3", { id, text: t("later.title") }),
      h("p", { class: "hint", text: t("later.lead") }),
      h("div", { class: "field" }, h("label", { for: within.id, text: t("later.within.label") }), within),
      h("div", { class: "field" }, h("label", { for: noteBox.id, text: t("later.note") }),
        h("p", { class: "hint", id: `${id}-hint`, text: t("later.note.hint", { count: NOTE_CHARS }) }), noteBox),
      error, submit);
    node.addEventListener("submit", (event) => {
      event.preventDefault();
      const profile = request?.profile || savedProfile("patient") || fields.value();
      const frame = { type: "talk_later", profile, within_h: Number(within.value) };
      const text = noteBox.value.trim();
      if (text) frame.note = text;
      if (!conn.send(frame)) { error.textContent = t("common.offline"); return; }
      error.textContent = "";
      submit.disabled = true;
      toLater = { note: text };
    });
    const failed = (message) => { error.textContent = message; submit.disabled = false; toLater = null; };
    const reset = () => { noteBox.value = ""; submit.disabled = false; error.textContent = ""; };
    return { node, failed, reset };
  }

  function showOptions(frame) {
    const nobody = frame.reason === "nobody_fits_now" && !frame.addressed && !again;
    options.hidden = !nobody;
    if (!nobody) return;
    const choices = request ? widenChoices(request, label) : [];
    widenBox.hidden = !choices.length;
    fill(widenList, choices.map((c) => h("button", { type: "button", class: "secondary", text: c.text, on: { click: () => {
      const f = { type: "widen", profile: c.profile };
      if (c.hold) f.prefer_same_diagnosis_s = c.hold;
      if (!conn.send(f)) { widenError.textContent = t("common.offline"); return; }
      widenError.textContent = "";
      queueTitle.focus();          // the button goes away with the new queued: keep the focus on the line
      request = { profile: c.profile, hold: c.hold };
      rememberRequest(request);
      saveProfile("patient", c.profile);
      fields.set(c.profile);
    } } })));
    // the deployment's lines: sent with a resources frame, on this queued, or asked for once here
    const shown = Array.isArray(frame.lines) ? frame.lines : lines;
    const draw = (items, lang) => fill(crisisBody, h("p", { text: t("wait.crisis.lead") }),
      h("p", { class: "urgent", text: t("crisis.emergency") }),
      items.length ? h("ul", { class: "lines", lang: lang || null }, items.map(lineItem)) : null);
    draw(shown, frame.locale || linesLocale);
    if (!shown.length && !askedLines) {
      askedLines = true;
      fetch(`/api/crisis-lines?locale=${encodeURIComponent(localeTag())}`, { cache: "no-store" })
        .then((res) => (res.ok ? res.json() : null))
        .then((got) => {
          if (!got || !Array.isArray(got.lines)) return;
          lines = got.lines;
          linesLocale = got.locale || "";
          if (!options.hidden) draw(lines, linesLocale);
        })
        .catch(() => { askedLines = false; });      // offline: the next queued asks again
    }
  }

  function showQueue(frame) {
    queued = true;
    const pos = frame.position;
    const name = again?.peer?.name;
    queueTitle.textContent = name ? t("wait.again.title", { name }) : frame.reason === "nobody_fits_now" ? t("wait.nobody.title") : t("patient.finding");
    position.textContent = pos ? (pos === 1 ? t("patient.next") : t("patient.position", { position: pos })) : t("patient.in_line");
    const fits = frame.fitting_available;
    if (name) {
      wait.textContent = t("wait.again.body", { name });
      fitting.textContent = "";
    } else if (frame.reason === "nobody_fits_now") {
      const words = profileWords(request?.profile || savedProfile("patient") || { diagnoses: [], side_effects: [], languages: [] });
      wait.textContent = t("wait.nobody", words);
      fitting.textContent = "";
    } else {
      wait.textContent = frame.estimated_wait_s === null || frame.estimated_wait_s === undefined
        ? t("wait.not_measured") : t("patient.wait", { duration: duration(frame.estimated_wait_s) });
      fitting.textContent = typeof fits === "number"
        ? (fits > 0 ? t("wait.fitting", { count: fits }) : t("wait.fitting.busy")) : "";
    }
    keepOpen.hidden = frame.reason === "nobody_fits_now";
    showOptions(frame);
    render();
  }

  function showLater() {
    laterCard.hidden = !later;
    if (!later) { laterCard.replaceChildren(); return; }
    const expires = later.expires_at ? later.expires_at * 1000 : null;
    const to = later.contact_id ? contacts.get(later.contact_id)?.peer?.name : null;
    fill(laterCard,
      h("h2", { id: "later-title", tabIndex: -1, text: t("later.pending.title") }),
      h("p", {}, to ? tx("later.pending.to", { name: isolate(to) }) : t("later.pending.body")),
      expires ? h("p", { class: "expires" }, tx("later.pending.until", {
        time: h("time", { dateTime: new Date(expires).toISOString(), text: dateTime(expires) }) })) : null,
      later.note ? h("div", { class: "later-note" }, h("p", { class: "hint", text: t("later.pending.note") }),
        h("blockquote", { dir: "auto", text: later.note })) : null,
      h("p", { class: "hint", text: t("later.pending.away") }),
      h("button", { type: "button", class: "secondary", text: t("later.cancel"), on: { click: () => {
        if (!conn.send({ type: "cancel_later", request_id: later.request_id })) laterStatus.textContent = t("common.offline");
      } } }),
      laterStatus);
  }

  function tell(text) {
    note.textContent = text;
    note.hidden = false;
    announce(text);
  }

  function openedAway(convs) {
    const names = convs.map((c) => c.peer?.name || t("chat.peer"));
    fill(note, tx("later.opened", { name: isolate(list(names)) }));
    note.hidden = false;
    announce(note.textContent);
  }

  function render() {
    const chatting = deck.size > 0;
    const queueWasHidden = queue.hidden;
    const hadFocus = form.contains(document.activeElement) || !document.activeElement || document.activeElement === document.body;
    form.hidden = chatting || queued;
    queue.hidden = chatting || !queued;
    laterCard.hidden = !later || queued;
    contacts.node.hidden = chatting || queued || (contacts.size === 0 && !contacts.telling);
    deck.root.hidden = !chatting;
    // the form that had the focus is gone: the focus goes to what replaced it, not to the page's start
    if (hadFocus && queueWasHidden && !queue.hidden) queue.querySelector("h2").focus();
    if (!queued && !chatting) { talkNow.disabled = false; talkNow.textContent = t("patient.talk_now"); }
  }

  conn.on("queued", (f) => { if (f.for === "group") return; note.hidden = true; showQueue(f); });
  conn.on("cancelled", (f) => {
    if (f.for === "group") return;       // waiting for a group: the Groups view answers it
    queued = false;
    const forLater = toLater && f.reason === "cancelled";
    if (forLater) {
      note.hidden = true;      // left the line for the talk later just asked for: the card says so
    } else if (f.reason === "declined" && again) {
      tell(t("patient.cancel.declined.name", { name: again.peer?.name || t("chat.peer") }));
    } else {
      tell(CANCEL_REASONS()[f.reason] || t("patient.cancel.left"));
    }
    again = null;
    toLater = null;
    render();
    if (forLater && !laterCard.hidden) laterCard.querySelector("h2")?.focus();     // the line it replaced is gone
  });
  conn.on("contact", () => render());
  conn.on("contact_ended", () => render());
  conn.on("later", (f) => {
    const wasQueued = queued;
    later = { request_id: f.request_id, expires_at: f.expires_at, contact_id: f.contact_id,
      note: toLater?.note ?? (later?.request_id === f.request_id ? later.note : "") };
    laterBox.reset();
    if (toLater && wasQueued && !f.contact_id) conn.send({ type: "cancel" });     // the talk later replaces the line
    else toLater = null;
    if (f.contact_id) { queued = false; note.hidden = true; }
    showLater();
    render();
    announce(t("later.made"));
    if (!laterCard.hidden && (wasQueued || f.contact_id)) laterCard.querySelector("h2")?.focus();
  });
  conn.on("later_cancelled", (f) => {
    if (later && later.request_id !== f.request_id) return;
    later = null;
    showLater();
    tell(f.reason === "unavailable" ? t("later.cancelled.unavailable") : t("later.cancelled"));
    render();
  });
  conn.on("later_expired", (f) => {
    if (later && later.request_id !== f.request_id) return;
    later = null;
    showLater();
    tell(t("later.expired"));
    render();
  });
  conn.on("resources", (f) => { if (Array.isArray(f.lines)) lines = f.lines; });
  conn.on("matched", (f) => {
    // not in line, so it was the talk-later request that was accepted (a live request takes precedence)
    if (!queued && later) { later = null; showLater(); }
    queued = false; note.hidden = true; again = null;
    views.select("one");          // a one-on-one chat opened: show it
    render();
    // matched while the tab is hidden: a notification, the title, a sound; gone once they look
    const name = f.peer?.name || t("chat.peer");
    alerts.raise(`matched-${f.conversation_id}`, {
      title: t("alerts.matched.title", { name }), body: t("alerts.matched.body"), titleBar: t("alerts.matched.titlebar"),
      focus: () => deck.root.querySelector(`.chat[data-conversation="${CSS.escape(f.conversation_id)}"] textarea`),
      untilVisible: true,
    });
  });
  conn.on("welcome", (f) => {
    const wasQueued = queued;
    later = f.later ? { ...f.later } : null;
    showLater();
    if (f.later_expired) tell(t("later.expired"));
    if (f.request) {
      if (!f.request.addressed) again = null;
      showQueue(f.request);
    } else {
      queued = false;
      if (wasQueued && !(f.conversations || []).length) {
        note.textContent = CANCEL_REASONS().grace_expired;
        note.hidden = false;
      }
    }
    render();
  });
  conn.on("error", (f) => {
    if (f.ref === "talk_now" || f.ref === "cancel") {
      formError.textContent = f.message;
      talkNow.disabled = false;
      talkNow.textContent = t("patient.talk_now");
    }
    if (f.ref === "talk_again") again = null;      // the contacts list says why
    if (f.ref === "talk_later") {
      laterBox.failed(f.field === "note" && (f.categories || []).includes("crisis") ? t("later.note.crisis") : f.message);
    }
    if (f.ref === "widen") widenError.textContent = f.message;
    if (f.ref === "cancel_later") laterStatus.textContent = f.message;
  });
  render();
}
