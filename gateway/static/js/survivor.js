// The survivor's page: profile and availability, incoming offers with a countdown, chats in tabs.
//
// The availability switch only ever shows what the server last said (`availability` frames), never
// what was clicked: if the server switches a volunteer off after missed offers, the switch says so.

import { ChatDeck } from "./chat.js";
import { groupsView, viewSwitch } from "./groups.js";
import { contactsPanel } from "./contacts.js";
import { profileFields, saveProfile, savedProfile } from "./profile.js";
import { resourcesPanel } from "./resources.js";
import { clock, dateTime, list, secondsLeft, t, tx } from "./i18n.js";
import { announce, fill, h, isolate } from "./ui.js";

const OFFER_GONE = () => ({
  offer_expired: t("offer.gone.expired"),
  offer_withdrawn: t("offer.gone.withdrawn"),
  declined: t("offer.gone.declined"),
});

/** What a patient and this survivor share, in words: "Breast cancer · Fatigue". */
export function sharedTopics(shared, label) {
  return [
    ...(shared?.diagnoses || []).map((c) => label("diagnoses", c)),
    ...(shared?.side_effects || []).map((c) => label("side_effects", c)),
  ];
}

/** Send an offer card's answer (live offer or talk-later card); false when offline. */
function answerCard(card, kind) {
  if (!card.conn.send({ type: kind, offer_id: card.offer.offer_id })) {
    card.status.textContent = t("common.offline");
    return false;
  }
  const hadFocus = card.node.contains(document.activeElement);
  card.accept.disabled = card.decline.disabled = true;
  card.status.textContent = kind === "accept" ? t("offer.connecting") : t("offer.declining");
  card.answered = kind;
  if (hadFocus) card.status.focus();     // the buttons it was on are disabled: keep it on the card
  card.onAnswered?.();
  return true;
}

class OfferCard {
  constructor(conn, offer, label, onGone) {
    this.conn = conn;
    this.goneOnce = false;
    this.offer = offer;
    this.onGone = onGone;
    this.total = Math.max(1, offer.expires_in_s || 30);
    this.deadline = performance.now() + (offer.expires_in_s || 0) * 1000;
    const topics = sharedTopics(offer.shared, label);
    const name = offer.patient?.name || t("offer.someone");
    this.seconds = h("span", { class: "seconds" });
    this.meter = h("progress", { max: this.total, value: this.total, "aria-hidden": "true" });
    this.accept = h("button", { type: "button", class: "primary", text: t("offer.accept"), on: { click: () => this.answer("accept") } });
    this.decline = h("button", { type: "button", class: "secondary", text: t("offer.decline"), on: { click: () => this.answer("decline") } });
    this.status = h("p", { class: "hint", role: "status", tabIndex: -1 });
    this.node = h("article", { class: "card offer", "data-offer": offer.offer_id, "aria-labelledby": `${offer.offer_id}-t` },
      h("h3", { id: `${offer.offer_id}-t` }, tx("offer.title", { name: isolate(name) })),
      h("p", {}, tx("shared.you_share", { topics: h("strong", { text: topics.join(" · ") || t("shared.experience") }) })),
      h("p", { class: "hint" }, tx("offer.sees", { name: isolate(name) })),
      h("p", { class: "countdown" }, tx("offer.left", { time: this.seconds })),
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
    this.seconds.textContent = secondsLeft(left);
    this.meter.value = left;
    if (left === 10 && !this.warned && !this.answered) { this.warned = true; announce(t("offer.ten_left", { seconds: 10 })); }
    if (left === 0) clearInterval(this.timer);
  }

  answer(kind) {
    answerCard(this, kind);
  }

  gone(text) {
    if (this.goneOnce) return;
    this.goneOnce = true;
    clearInterval(this.timer);
    fill(this.node, h("p", { class: "hint", text }));
    this.node.classList.add("gone");
    setTimeout(() => this.node.remove(), 6000);
    this.onGone(this);
  }

  destroy() {
    clearInterval(this.timer);
    this.node.remove();
    this.onGone(this);
  }
}

/**
 * A talk-later request shown as a card beside live offers: no countdown (it stays until answered, until
 * this survivor goes unavailable or someone else takes it), the patient's note (their own words: text
 * only, direction isolated), and how long they have been waiting.
 */
class LaterCard {
  constructor(conn, offer, label, onGone) {
    this.conn = conn;
    this.offer = offer;
    this.onGone = onGone;
    this.goneOnce = false;
    const topics = sharedTopics(offer.shared, label);
    const name = offer.patient?.name || t("offer.someone");
    const since = offer.waiting_since ? offer.waiting_since * 1000 : null;
    this.accept = h("button", { type: "button", class: "primary", text: t("offer.accept"), on: { click: () => this.answer("accept") } });
    this.decline = h("button", { type: "button", class: "secondary", text: t("offer.decline"), on: { click: () => this.answer("decline") } });
    this.status = h("p", { class: "hint", role: "status", tabIndex: -1 });
    this.node = h("article", { class: "card offer later-offer", "data-offer": offer.offer_id, "aria-labelledby": `${offer.offer_id}-t` },
      h("h3", { id: `${offer.offer_id}-t` }, tx("later_offer.title", { name: isolate(name) })),
      h("p", {}, tx("shared.you_share", { topics: h("strong", { text: topics.join(" · ") || t("shared.experience") }) })),
      offer.note ? h("div", { class: "later-note" }, h("p", { class: "hint" }, tx("later_offer.note", { name: isolate(name) })),
        h("blockquote", { dir: "auto", text: offer.note })) : null,
      since ? h("p", { class: "hint" }, tx("later_offer.since", {
        time: h("time", { dateTime: new Date(since).toISOString(),
          text: Date.now() - since < 12 * 3600 * 1000 ? clock(since) : dateTime(since) }) })) : null,
      h("p", { class: "hint" }, tx("later_offer.sees", { name: isolate(name) })),
      h("div", { class: "row" }, this.accept, this.decline),
      this.status);
  }

  answer(kind) {
    if (!answerCard(this, kind)) return;
    // a declined card gets no frame back: it is simply not shown to this survivor again
    if (kind === "decline") setTimeout(() => this.gone(t("later_offer.declined")), 300);
  }

  /** Accepting was refused for lack of a free slot: the card stays, and can be answered again later. */
  refused(message) {
    this.answered = null;
    this.accept.disabled = this.decline.disabled = false;
    this.status.textContent = message;
  }

  gone(text) {
    if (this.goneOnce) return;
    this.goneOnce = true;
    fill(this.node, h("p", { class: "hint", text }));
    this.node.classList.add("gone");
    setTimeout(() => this.node.remove(), 6000);
    this.onGone(this);
  }

  destroy() {
    this.node.remove();
    this.onGone(this);
  }
}

function availabilityText(state) {
  if (state.reason === "missed_offers") return t("avail.missed");
  if (!state.available) return t("avail.off");
  const busy = state.active ? ` ${t("avail.busy", { count: state.active })}` : "";
  return `${t("avail.on", { count: state.max_chats })}${busy}`;
}

export function survivorPage(root, conn, { vocabulary, label, alerts }) {
  const offers = new Map();           // offer_id -> OfferCard
  let server = null;                  // the last availability state the server told us
  const resources = resourcesPanel(conn);

  // ---- availability ----
  const fields = profileFields(vocabulary, savedProfile("survivor"), {
    diagnosis: t("profile.diagnosis"),
    sideEffects: t("survivor.topics"),
    sideEffectsSummary: t("profile.topics.summary"),
    languages: t("profile.languages"),
    languagesSummary: t("profile.languages.summary"),
  });
  const maxChats = h("select", { id: "max-chats" }, [1, 2, 3].map((n) => h("option", { value: String(n), text: new Intl.NumberFormat(document.documentElement.lang).format(n) })));
  const toggle = h("button", { type: "button", role: "switch", class: "switch", id: "available", "aria-checked": "false", "aria-describedby": "availability-state" },
    h("span", { class: "knob", "aria-hidden": "true" }), h("span", { class: "switch-label", text: t("avail.switch") }));
  const stateText = h("p", { id: "availability-state", class: "state", role: "status", "aria-live": "polite", text: t("avail.checking") });
  const formError = h("p", { class: "error-note", role: "alert" });
  const save = h("button", { type: "submit", class: "secondary", text: t("survivor.save") });
  const profileForm = h("form", { class: "profile-form" }, fields.node,
    h("div", { class: "field inline" }, h("label", { for: "max-chats", text: t("survivor.max_chats") }), maxChats), formError, save);
  const settings = h("details", { class: "settings" }, h("summary", { text: t("survivor.profile") }), profileForm);
  const panel = h("section", { class: "card availability", "aria-labelledby": "avail-title" },
    h("h2", { id: "avail-title", text: t("avail.title") }), toggle, stateText, alerts.permissionNote, alerts.soundToggle(), settings);

  function send(available) {
    const problem = fields.check();
    formError.textContent = problem;
    if (problem) { settings.open = true; return; }
    const profile = fields.value();
    saveProfile("survivor", profile);
    const ok = conn.send({ type: "availability", available, profile, max_chats: Number(maxChats.value) });
    if (!ok) { formError.textContent = t("common.offline"); return; }
    toggle.setAttribute("aria-busy", "true");
    if (available) alerts.askPermission();      // one sentence of why, asked when it becomes useful
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
  const offerList = h("div", { class: "offers", role: "region", "aria-live": "polite", "aria-label": t("offer.list") });
  function addLater(frame) {
    if (offers.has(frame.offer_id)) return;
    const card = new LaterCard(conn, frame, label, (c) => { offers.delete(c.offer.offer_id); });
    offers.set(frame.offer_id, card);
    offerList.append(card.node);
    views.badge("one");
    announce(t("later_offer.announce", { name: frame.patient?.name || t("offer.someone") }));
  }
  function addOffer(frame) {
    if (frame.type === "later_offer") { addLater(frame); return; }
    if (offers.has(frame.offer_id)) return;
    const card = new OfferCard(conn, frame, label, (c) => { offers.delete(c.offer.offer_id); alerts.clear(`offer-${c.offer.offer_id}`); });
    card.onAnswered = () => alerts.clear(`offer-${frame.offer_id}`);
    offers.set(frame.offer_id, card);
    offerList.append(card.node);
    views.badge("one");           // an offer while the Groups view is shown: the other view says "new"
    const name = frame.patient?.name || t("offer.someone");
    announce(t("offer.announce", { name, seconds: frame.expires_in_s }));
    // the tab is hidden: a system notification, the title, a gentle sound, a vibration (alerts.js)
    alerts.raise(`offer-${frame.offer_id}`, {
      title: t("alerts.offer.title", { name }),
      body: t("shared.you_share", { topics: list(sharedTopics(frame.shared, label)) || t("shared.experience") }),
      titleBar: t("alerts.offer.titlebar"),
      focus: () => card.accept,
    });
    // move focus to the offer only if it is not somewhere else already (e.g. typing in another chat)
    const active = document.activeElement;
    if (!active || active === document.body || active.id === "main" || panel.contains(active)) card.accept.focus({ preventScroll: true });
  }
  const offerGone = (f) => {
    const card = offers.get(f.offer_id);
    card?.gone(card instanceof LaterCard ? t("later_offer.gone") : OFFER_GONE()[f.type]);
  };

  // ---- chats ----
  const deck = new ChatDeck(conn, { label });
  const contacts = contactsPanel(conn, { role: "survivor" });
  // ---- groups: a view of its own, found with the same profile (facilitators also create and lead them) ----
  const one = h("div", { class: "view-one" }, offerList, deck.root, panel, contacts.node);
  const groups = groupsView(conn, { vocabulary, label, role: "survivor", profile: () => fields.value(),
    profileProblem: () => fields.check(), onNews: () => views.badge("groups") });
  const views = viewSwitch([
    { key: "one", label: t("views.one"), node: one },
    { key: "groups", label: t("views.groups"), node: groups.node, onShow: (on) => groups.shown(on) },
  ]);
  fill(root, views.node, resources.node, one, groups.node);

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
  conn.on("later_offer", addLater);
  conn.on("offer_expired", offerGone);
  conn.on("offer_withdrawn", offerGone);
  conn.on("declined", offerGone);
  conn.on("matched", () => {
    views.select("one");
    for (const [oid, card] of offers) if (card.answered === "accept") { card.destroy(); offers.delete(oid); }
  });
  conn.on("error", (f) => {
    if (f.ref === "availability") { toggle.removeAttribute("aria-busy"); formError.textContent = f.message; settings.open = true; }
    if (f.ref === "accept" && f.code === "capacity") {
      for (const card of offers.values()) if (card.answered === "accept" && card.refused) card.refused(f.message || t("later_offer.capacity"));
    }
    if ((f.ref === "accept" || f.ref === "decline") && f.code === "not_found") {
      for (const card of [...offers.values()]) if (card.answered) card.gone(t("offer.gone.closed"));
    }
  });
}
