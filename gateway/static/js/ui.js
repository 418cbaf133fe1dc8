// DOM helpers.  Every piece of text goes in through textContent or a text node:
// nothing in this client ever assigns innerHTML, so text a person typed can never become markup.

import { t } from "./i18n.js";

/**
 * Create an element.  props: {class, text, hidden, on: {event: fn}, attrs: {name: value}, ...properties};
 * children: nodes, strings (as text nodes), arrays, or null/false (skipped).
 */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    else if (key === "attrs") for (const [name, v] of Object.entries(value)) { if (v !== null && v !== undefined) node.setAttribute(name, String(v)); }
    else if (key.startsWith("aria-") || key.startsWith("data-") || key === "role" || key === "for") node.setAttribute(key, String(value));
    else node[key] = value;
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/**
 * A person's name, isolated: a <bdi> element, so that a name written right to left (or one that
 * tried to smuggle in bidi controls) can never reorder the text around it.  Text only, as always.
 */
export function isolate(name) {
  return h("bdi", { text: name });
}

/** Replace a node's children (text or nodes). */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

let uid = 0;
/** A unique id for label/aria wiring. */
export function nextId(stem = "f") {
  uid += 1;
  return `${stem}-${uid}`;
}

/** A labelled control: returns {row, input}. */
export function field(label, input, hint) {
  input.id ||= nextId("in");
  const hintNode = hint ? h("p", { class: "hint", id: nextId("hint"), text: hint }) : null;
  if (hintNode) input.setAttribute("aria-describedby", hintNode.id);
  return { row: h("div", { class: "field" }, h("label", { for: input.id, text: label }), input, hintNode), input };
}

/** A fieldset of checkboxes from [{code, label}]; returns {set, values()} . */
export function checkboxGroup(legend, items, checked = [], { name } = {}) {
  const chosen = new Set(checked);
  const boxes = items.map((item) => {
    const box = h("input", { type: "checkbox", name: name || legend, value: item.code, checked: chosen.has(item.code) });
    box.id = nextId("cb");
    return { box, row: h("div", { class: "check" }, box, h("label", { for: box.id, text: item.label, lang: item.fallback ? "en" : null })) };
  });
  const set = h("fieldset", { class: "checks" }, h("legend", { text: legend }),
    h("div", { class: "check-grid" }, boxes.map((b) => b.row)));
  const setValues = (codes) => {
    const want = new Set(codes);
    for (const b of boxes) b.box.checked = want.has(b.box.value);
    set.dispatchEvent(new Event("change"));
  };
  return { set, values: () => boxes.filter((b) => b.box.checked).map((b) => b.box.value), setValues };
}

/**
 * A button that asks "are you sure?" in place (no window.confirm: calm, and keyboard friendly).
 * label and question: strings, nodes or arrays of both (e.g. with an isolated name).
 */
export function confirmButton(label, question, onConfirm, { cls = "secondary", yes = t("common.yes"), no = t("common.cancel") } = {}) {
  const wrap = h("span", { class: "confirm" });
  const first = h("button", { type: "button", class: cls }, label);
  const ask = () => {
    const yesBtn = h("button", { type: "button", class: "danger", text: yes, on: { click: () => { reset(); onConfirm(); } } });
    const noBtn = h("button", { type: "button", class: "secondary", text: no, on: { click: () => { reset(); first.focus(); } } });
    fill(wrap, h("span", { class: "question" }, question), yesBtn, noBtn);
    yesBtn.focus();
  };
  const reset = () => fill(wrap, first);
  first.addEventListener("click", ask);
  fill(wrap, first);
  return wrap;
}

/** Say something to screen readers without moving focus. */
export function announce(text) {
  const region = document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  // a fresh text node on the next frame makes repeated announcements audible
  requestAnimationFrame(() => { region.textContent = text; });
}

/** Labels for vocabulary codes, with the code itself as the fallback. */
export function labeller(vocabulary) {
  const maps = {};
  for (const kind of ["diagnoses", "side_effects", "languages"]) {
    maps[kind] = new Map((vocabulary?.[kind] || []).map((item) => [item.code, item.label]));
  }
  return (kind, code) => maps[kind]?.get(code) || code;
}

/** Only http(s) links from configuration become hrefs. */
export function safeUrl(url) {
  try {
    const u = new URL(String(url), window.location.href);
    return u.protocol === "https:" || u.protocol === "http:" ? u.href : null;
  } catch {
    return null;
  }
}
