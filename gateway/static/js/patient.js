// The patient's page: profile → "Talk now" → place in line → chat → feedback.

import { ChatDeck } from "./chat.js";
import { profileFields, saveProfile, savedProfile } from "./profile.js";
import { resourcesPanel } from "./resources.js";
import { duration, t } from "./i18n.js";
import { announce, fill, h } from "./ui.js";

const CANCEL_REASONS = () => ({
  grace_expired: t("patient.cancel.grace_expired"),
  suspended: t("patient.cancel.suspended"),
});

export function patientPage(root, conn, { vocabulary, label, alerts }) {
  let queued = false;
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
    if (!conn.send(frame)) formError.textContent = t("common.offline");
    else {
      formError.textContent = ""; talkNow.disabled = true; talkNow.textContent = t("patient.looking");
      alerts.askPermission();      // so a match while the tab is hidden can say so
    }
  });

  // ---- the line ----
  const position = h("p", { class: "position", id: "queue-position" });
  const wait = h("p", { class: "wait", id: "queue-wait" });
  const cancel = h("button", { type: "button", class: "secondary", text: t("common.cancel"), on: { click: () => conn.send({ type: "cancel" }) } });
  const queue = h("section", { class: "card queue", "aria-labelledby": "queue-title", hidden: true },
    h("h2", { id: "queue-title", tabIndex: -1, text: t("patient.finding") }),
    h("div", { class: "pulse", "aria-hidden": "true" }),
    h("div", { role: "status", "aria-live": "polite" }, position, wait),
    h("p", { class: "hint", text: t("patient.keep_open") }), alerts.permissionNote,
    cancel);
  const note = h("p", { class: "note", role: "status", hidden: true });

  // ---- chats ----
  const deck = new ChatDeck(conn, { label, onChange: () => render() });

  fill(root, resources.node, note, form, queue, deck.root);

  function showQueue(frame) {
    queued = true;
    const pos = frame.position;
    position.textContent = pos ? (pos === 1 ? t("patient.next") : t("patient.position", { position: pos })) : t("patient.in_line");
    wait.textContent = t("patient.wait", { duration: duration(frame.estimated_wait_s) });
    render();
  }

  function render() {
    const chatting = deck.size > 0;
    const queueWasHidden = queue.hidden;
    const hadFocus = form.contains(document.activeElement) || !document.activeElement || document.activeElement === document.body;
    form.hidden = chatting || queued;
    queue.hidden = chatting || !queued;
    deck.root.hidden = !chatting;
    // the form that had the focus is gone: the focus goes to what replaced it, not to the page's start
    if (hadFocus && queueWasHidden && !queue.hidden) queue.querySelector("h2").focus();
    if (!queued && !chatting) { talkNow.disabled = false; talkNow.textContent = t("patient.talk_now"); }
  }

  conn.on("queued", (f) => { note.hidden = true; showQueue(f); });
  conn.on("cancelled", (f) => {
    queued = false;
    note.textContent = CANCEL_REASONS()[f.reason] || t("patient.cancel.left");
    note.hidden = false;
    announce(note.textContent);
    render();
  });
  conn.on("matched", (f) => {
    queued = false; note.hidden = true; render();
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
    if (f.request) showQueue(f.request);
    else {
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
  });
  render();
}
