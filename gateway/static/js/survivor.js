// The survivor's page: profile and availability, incoming offers with a countdown, chats in tabs.
//
// The availability switch only ever shows what the server last said (`availability` frames), never
// what was clicked: if the server switches a volunteer off after missed offers, the switch says so.

import { ChatDeck } from "./chat.js";
import { profileFields, saveProfile, savedProfile } from "./profile.js";
import { resourcesPanel } from "./resources.js";
import { announce, fill, h, isolate } from "./ui.js";

const OFFER_GONE = {
  offer_expired: "The time to answer ran out; we offered the chat to someone else.",
  offer_withdrawn: "The patient is no longer waiting.",
  declined: "You declined. Thank you for being honest about your energy.",
};

class OfferCard {
  constructor(conn, offer, label, onGone) {
    this.conn = conn;
    this.offer = offer;
    this.onGone = onGone;
    this.total = Math.max(1, offer.expires_in_s || 30);
    this.deadline = performance.now() + (offer.expires_in_s || 0) * 1000;
    const shared = offer.shared || {};
    const topics = [
      ...(shared.diagnoses || []).map((c) => label("diagnoses", c)),
      ...(shared.side_effects || []).map((c) => label("side_effects", c)),
    ];
    const name = offer.patient?.name || "Someone";
    this.seconds = h("span", { class: "seconds" });
    this.meter = h("progress", { max: this.total, value: this.total, "aria-hidden": "true" });
    this.accept = h("button", { type: "button", class: "primary", text: "Accept", on: { click: () => this.answer("accept") } });
    this.decline = h("button", { type: "button", class: "secondary", text: "Decline", on: { click: () => this.answer("decline") } });
    this.status = h("p", { class: "hint", role: "status" });
    this.node = h("article", { class: "card offer", "data-offer": offer.offer_id, "aria-labelledby": `${offer.offer_id}-t` },
      h("h3", { id: `${offer.offer_id}-t` }, isolate(name), " would like to talk"),
      h("p", {}, "You share: ", h("strong", { text: topics.join(" · ") || "your experience" })),
      h("p", { class: "hint" }, isolate(name), " will see your name and these topics."),
      h("p", { class: "countdown" }, this.seconds, " left to answer"),
      this.meter,
      h("div", { class: "row" }, this.accept, this.decline),
      this.status);
    this.tick();
    this.timer = setInterval(() => this.tick(), 250);
  }

  remaining() {
    return Math.max(0, Math.ceil((this.deadline - performance.now()) / 1000));
  }

  tick() {
    const left = this.remaining();
    this.seconds.textContent = `${left} s`;
    this.meter.value = left;
    if (left === 10 && !this.warned && !this.answered) { this.warned = true; announce("10 seconds left to answer the chat request."); }
    if (left === 0) clearInterval(this.timer);
  }

  answer(kind) {
    if (!this.conn.send({ type: kind, offer_id: this.offer.offer_id })) {
      this.status.textContent = "You are offline; we are reconnecting.";
      return;
    }
    this.accept.disabled = this.decline.disabled = true;
    this.status.textContent = kind === "accept" ? "Connecting you…" : "Declining…";
    this.answered = kind;
  }

  gone(text) {
    clearInterval(this.timer);
    fill(this.node, h("p", { class: "hint", text }));
    this.node.classList.add("gone");
    setTimeout(() => this.node.remove(), 6000);
    this.onGone(this);
  }

  destroy() {
    clearInterval(this.timer);
    this.node.remove();
  }
}

function availabilityText(state) {
  if (state.reason === "missed_offers") return state.message || "Two offers went unanswered, so you are now unavailable.";
  if (!state.available) return "You are not available for new chats.";
  const busy = state.active ? ` You are in ${state.active} chat${state.active > 1 ? "s" : ""}.` : "";
  return `You are available for up to ${state.max_chats} chat${state.max_chats > 1 ? "s" : ""} at a time.${busy}`;
}

export function survivorPage(root, conn, { vocabulary, label }) {
  const offers = new Map();           // offer_id -> OfferCard
  let server = null;                  // the last availability state the server told us
  const resources = resourcesPanel(conn);

  // ---- availability ----
  const fields = profileFields(vocabulary, savedProfile("survivor"), {
    diagnosis: "Your diagnosis",
    sideEffects: "What you can talk about from experience",
    sideEffectsSummary: "Side effects and topics",
    languages: "Languages you can chat in",
    languagesSummary: "Languages",
  });
  const maxChats = h("select", { id: "max-chats" }, [1, 2, 3].map((n) => h("option", { value: String(n), text: String(n) })));
  const toggle = h("button", { type: "button", role: "switch", class: "switch", id: "available", "aria-checked": "false", "aria-describedby": "availability-state" },
    h("span", { class: "knob", "aria-hidden": "true" }), h("span", { class: "switch-label", text: "Available for new chats" }));
  const stateText = h("p", { id: "availability-state", class: "state", role: "status", "aria-live": "polite", text: "Checking…" });
  const formError = h("p", { class: "error-note", role: "alert" });
  const save = h("button", { type: "submit", class: "secondary", text: "Save profile" });
  const profileForm = h("form", { class: "profile-form" }, fields.node,
    h("div", { class: "field inline" }, h("label", { for: "max-chats", text: "Chats at once" }), maxChats), formError, save);
  const settings = h("details", { class: "settings" }, h("summary", { text: "Your profile" }), profileForm);
  const panel = h("section", { class: "card availability", "aria-labelledby": "avail-title" },
    h("h2", { id: "avail-title", text: "Your availability" }), toggle, stateText, settings);

  function send(available) {
    const problem = fields.check();
    formError.textContent = problem;
    if (problem) { settings.open = true; return; }
    const profile = fields.value();
    saveProfile("survivor", profile);
    const ok = conn.send({ type: "availability", available, profile, max_chats: Number(maxChats.value) });
    if (!ok) { formError.textContent = "You are offline right now; we will reconnect in a moment."; return; }
    toggle.setAttribute("aria-busy", "true");
  }
  toggle.addEventListener("click", () => send(!(server && server.available)));
  profileForm.addEventListener("submit", (event) => { event.preventDefault(); send(Boolean(server && server.available)); });

  function showState(state) {
    server = state;
    if (toggle.getAttribute("aria-busy") === "true" && state.available) settings.open = false;
    toggle.removeAttribute("aria-busy");
    toggle.setAttribute("aria-checked", String(Boolean(state.available)));
    stateText.textContent = availabilityText(state);
    if (state.max_chats) maxChats.value = String(state.max_chats);
    if (state.reason === "missed_offers") announce(stateText.textContent);
  }

  // ---- offers ----
  const offerList = h("div", { class: "offers", "aria-live": "polite", "aria-label": "Chat requests" });
  function addOffer(frame) {
    if (offers.has(frame.offer_id)) return;
    const card = new OfferCard(conn, frame, label, (c) => offers.delete(c.offer.offer_id));
    offers.set(frame.offer_id, card);
    offerList.append(card.node);
    announce(`${frame.patient?.name || "Someone"} would like to talk. You have ${frame.expires_in_s} seconds to answer.`);
    // move focus to the offer only if it is not somewhere else already (e.g. typing in another chat)
    const active = document.activeElement;
    if (!active || active === document.body || active.id === "main" || panel.contains(active)) card.accept.focus({ preventScroll: true });
  }
  const offerGone = (f) => offers.get(f.offer_id)?.gone(OFFER_GONE[f.type]);

  // ---- chats ----
  const deck = new ChatDeck(conn, { label });
  fill(root, resources.node, offerList, deck.root, panel);

  conn.on("welcome", (f) => {
    if (f.availability) {
      showState(f.availability);
      const p = f.availability.profile;
      if (p) { fields.set(p); saveProfile("survivor", p); }
    } else {
      showState({ available: false });
      settings.open = true;
    }
    const open = new Set((f.offers || []).map((o) => o.offer_id));
    for (const [oid, card] of offers) if (!open.has(oid)) { card.destroy(); offers.delete(oid); }
    for (const o of f.offers || []) addOffer(o);
  });
  conn.on("availability", showState);
  conn.on("offer", addOffer);
  conn.on("offer_expired", offerGone);
  conn.on("offer_withdrawn", offerGone);
  conn.on("declined", offerGone);
  conn.on("matched", () => {
    for (const [oid, card] of offers) if (card.answered === "accept") { card.destroy(); offers.delete(oid); }
  });
  conn.on("error", (f) => {
    if (f.ref === "availability") { toggle.removeAttribute("aria-busy"); formError.textContent = f.message; settings.open = true; }
    if ((f.ref === "accept" || f.ref === "decline") && f.code === "not_found") {
      for (const card of offers.values()) if (card.answered) card.gone("This request is no longer open.");
    }
  });
}
