// The patient's page: profile → "Talk now" → place in line → chat → feedback.

import { ChatDeck } from "./chat.js";
import { profileFields, saveProfile, savedProfile } from "./profile.js";
import { resourcesPanel } from "./resources.js";
import { announce, duration, fill, h } from "./ui.js";

const CANCEL_REASONS = {
  grace_expired: "You were away for a while, so your place in line was released. You can ask again whenever you like.",
  suspended: "Your account is paused by a moderator.",
};

export function patientPage(root, conn, { vocabulary, label }) {
  let queued = false;
  const resources = resourcesPanel(conn);

  // ---- profile and the big button ----
  const fields = profileFields(vocabulary, savedProfile("patient"), {
    diagnosis: "Your diagnosis",
    sideEffects: "What would you like to talk about?",
    sideEffectsSummary: "Side effects and topics",
    languages: "Languages you can chat in",
    languagesSummary: "Languages",
  });
  const hold = h("input", { type: "checkbox", id: "hold-dx" });
  const formError = h("p", { class: "error-note", role: "alert" });
  const talkNow = h("button", { type: "submit", class: "talk-now", text: "Talk now" });
  const form = h("form", { class: "card", "aria-labelledby": "profile-title" },
    h("h2", { id: "profile-title", text: "Talk with someone who has been there" }),
    h("p", { class: "lead", text: "A volunteer who went through the same diagnosis or side effects can chat with you now. Tell us a little, then press Talk now." }),
    fields.node,
    h("div", { class: "check" }, hold, h("label", { for: "hold-dx", text: "I'd prefer someone with my diagnosis (wait up to 2 minutes for one)" })),
    formError, talkNow);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const problem = fields.check();
    formError.textContent = problem;
    if (problem) return;
    const profile = fields.value();
    saveProfile("patient", profile);
    const frame = { type: "talk_now", profile };
    if (hold.checked && profile.diagnoses.length) frame.prefer_same_diagnosis_s = 120;
    if (!conn.send(frame)) formError.textContent = "You are offline right now; we will reconnect in a moment.";
    else { formError.textContent = ""; talkNow.disabled = true; talkNow.textContent = "Looking…"; }
  });

  // ---- the line ----
  const position = h("p", { class: "position", id: "queue-position" });
  const wait = h("p", { class: "wait", id: "queue-wait" });
  const cancel = h("button", { type: "button", class: "secondary", text: "Cancel", on: { click: () => conn.send({ type: "cancel" }) } });
  const queue = h("section", { class: "card queue", "aria-labelledby": "queue-title", hidden: true },
    h("h2", { id: "queue-title", text: "Finding someone for you…" }),
    h("div", { class: "pulse", "aria-hidden": "true" }),
    h("div", { role: "status", "aria-live": "polite" }, position, wait),
    h("p", { class: "hint", text: "Keep this page open. We will connect you as soon as a volunteer is free." }),
    cancel);
  const note = h("p", { class: "note", role: "status", hidden: true });

  // ---- chats ----
  const deck = new ChatDeck(conn, { label, onChange: () => render() });

  fill(root, resources.node, note, form, queue, deck.root);

  function showQueue(frame) {
    queued = true;
    const pos = frame.position;
    position.textContent = pos ? (pos === 1 ? "You are next in line." : `You are number ${pos} in line.`) : "You are in line.";
    wait.textContent = `Estimated wait: ${duration(frame.estimated_wait_s)}.`;
    render();
  }

  function render() {
    const chatting = deck.size > 0;
    form.hidden = chatting || queued;
    queue.hidden = chatting || !queued;
    deck.root.hidden = !chatting;
    if (!queued && !chatting) { talkNow.disabled = false; talkNow.textContent = "Talk now"; }
  }

  conn.on("queued", (f) => { note.hidden = true; showQueue(f); });
  conn.on("cancelled", (f) => {
    queued = false;
    note.textContent = CANCEL_REASONS[f.reason] || "You left the line. You can come back any time.";
    note.hidden = false;
    announce(note.textContent);
    render();
  });
  conn.on("matched", () => { queued = false; note.hidden = true; render(); });
  conn.on("welcome", (f) => {
    const wasQueued = queued;
    if (f.request) showQueue(f.request);
    else {
      queued = false;
      if (wasQueued && !(f.conversations || []).length) {
        note.textContent = CANCEL_REASONS.grace_expired;
        note.hidden = false;
      }
    }
    render();
  });
  conn.on("error", (f) => {
    if (f.ref === "talk_now" || f.ref === "cancel") {
      formError.textContent = f.message;
      talkNow.disabled = false;
      talkNow.textContent = "Talk now";
    }
  });
  render();
}
