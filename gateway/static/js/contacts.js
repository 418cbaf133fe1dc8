// Keeping in touch: the people a patient or survivor chose to keep as contacts (both must ask), with who
// is available now, "Talk again" (patients: that survivor only) and "End" (either side; the other side is
// not told, the contact only leaves their list).
//
// The server lists contacts in every welcome ({contact_id, peer: {name, role}, available}); a contact
// made live comes as {"type": "contact"} (without availability: it is shown once the next welcome says).

import { t, tx } from "./i18n.js";
import { confirmButton, fill, h, isolate, nextId } from "./ui.js";

export function contactsPanel(conn, { role, onTalkAgain } = {}) {
  const contacts = new Map();          // contact_id -> {contact_id, peer, available}
  let acted = null;                    // the contact the last talk_again / end_contact was about (errors name none)
  const titleId = nextId("contacts");
  const items = h("ul", { class: "contact-list" });
  const status = h("p", { class: "hint", role: "status" });
  const node = h("section", { class: "card contacts", id: "contacts", "aria-labelledby": titleId, hidden: true },
    h("h2", { id: titleId, text: t("contacts.title") }),
    h("p", { class: "hint", text: role === "patient" ? t("contacts.lead.patient") : t("contacts.lead.survivor") }),
    items, status);

  function availability(c) {
    if (typeof c.available !== "boolean") return null;
    const peerIsSurvivor = c.peer?.role === "survivor";
    const text = c.available
      ? (peerIsSurvivor ? t("contacts.available") : t("contacts.online"))
      : (peerIsSurvivor ? t("contacts.away") : t("contacts.offline"));
    return h("span", { class: `presence ${c.available ? "on" : "off"}`, text });
  }

  function item(c) {
    const name = c.peer?.name || t("chat.peer");
    const buttons = [];
    if (role === "patient") {
      buttons.push(h("button", { type: "button", class: "primary", text: t("contacts.again"),
        "aria-label": t("contacts.again.label", { name }),
        on: { click: () => {
          if (!conn.send({ type: "talk_again", contact_id: c.contact_id })) { status.textContent = t("common.offline"); return; }
          status.textContent = "";
          acted = c.contact_id;
          onTalkAgain?.(c);
        } } }));
    }
    buttons.push(confirmButton(t("contacts.end"), tx("contacts.end.ask", { name: isolate(name) }),
      () => {
        acted = c.contact_id;
        if (!conn.send({ type: "end_contact", contact_id: c.contact_id })) status.textContent = t("common.offline");
      },
      { yes: t("contacts.end.yes"), no: t("common.cancel") }));
    return h("li", { class: "contact", "data-contact": c.contact_id },
      h("p", { class: "contact-name" }, h("strong", {}, isolate(name)), " ", availability(c)),
      h("div", { class: "row" }, buttons));
  }

  function render() {
    fill(items, [...contacts.values()].map(item));
    node.hidden = contacts.size === 0;
  }

  conn.on("welcome", (f) => {
    contacts.clear();
    for (const c of f.contacts || []) contacts.set(c.contact_id, c);
    render();
  });
  conn.on("contact", (f) => {
    contacts.set(f.contact_id, { ...contacts.get(f.contact_id), contact_id: f.contact_id, peer: f.peer });
    render();
  });
  conn.on("contact_ended", (f) => {
    const c = contacts.get(f.contact_id);
    contacts.delete(f.contact_id);
    render();
    if (c) status.textContent = t("contacts.ended", { name: c.peer?.name || t("chat.peer") });
    node.hidden = contacts.size === 0 && !c;
  });
  conn.on("error", (f) => {
    if (f.ref === "talk_again" || f.ref === "end_contact") {
      status.textContent = f.code === "not_found" ? t("contacts.gone") : (f.message || t("common.error"));
      if (f.code === "not_found" && acted && contacts.delete(acted)) render();     // ended by the other side
      node.hidden = false;
    }
  });

  return {
    node,
    get: (kid) => contacts.get(kid),
    get size() { return contacts.size; },
    get telling() { return Boolean(status.textContent); },       // something to say even with an empty list
  };
}

/**
 * "Keep in touch with Sam?" under a conversation that ended: asks the server (keep_in_touch); both must
 * ask before either gets the contact, and the peer is never told that only one side asked.
 */
export function keepInTouch(conn, cid, peerName, unsubscribe) {
  const status = h("p", { class: "hint", role: "status" });
  const ask = h("button", { type: "button", class: "secondary", text: t("keep.button") });
  const node = h("div", { class: "keep-in-touch" },
    h("p", { class: "keep-question" }, tx("keep.ask", { name: isolate(peerName) })),
    h("p", { class: "hint", text: t("keep.hint") }),
    ask, status);
  let asked = false;
  ask.addEventListener("click", () => {
    if (!conn.send({ type: "keep_in_touch", conversation_id: cid })) { status.textContent = t("common.offline"); return; }
    asked = true;
    ask.disabled = true;
  });
  unsubscribe.push(conn.on("keep_in_touch_sent", (f) => {
    if (f.conversation_id !== cid) return;
    ask.hidden = true;
    fill(status, tx("keep.sent", { name: isolate(peerName) }));
  }));
  unsubscribe.push(conn.on("contact", (f) => {
    if (!asked || f.peer?.name !== peerName) return;
    ask.hidden = true;
    fill(status, tx("keep.done", { name: isolate(peerName) }));
  }));
  unsubscribe.push(conn.on("error", (f) => {
    if (f.ref !== "keep_in_touch" || f.conversation_id && f.conversation_id !== cid) return;
    ask.disabled = false;
    status.textContent = f.message || t("common.error");
  }));
  return node;
}
