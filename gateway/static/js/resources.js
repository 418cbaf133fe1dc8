// The crisis resources panel, shown when the server sends {"type": "resources", lines, message}.
// The lines come from the deployment's configuration, but they are still drawn as text, and only
// http(s) links and dialable numbers become links.  The lines are the ones for this person's language
// or region (the server picks them by the locale the page sent in its hello); the words around them
// are the page's own catalogue, so the panel is always in the page's language.

import { t } from "./i18n.js";
import { announce, fill, h, safeUrl } from "./ui.js";

export function lineItem(line) {
  const parts = [h("strong", { text: line.name || t("crisis.line") })];
  if (line.phone) {
    const dial = String(line.phone).replace(/[^0-9+]/g, "");
    parts.push(" — ", dial ? h("a", { href: `tel:${dial}`, text: String(line.phone) }) : String(line.phone));
  }
  if (line.text) parts.push(h("span", { class: "hint", text: ` ${line.text}` }));
  const url = line.url && safeUrl(line.url);
  if (url) parts.push(" ", h("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: t("crisis.website") }));
  return h("li", {}, parts);
}

export function resourcesPanel(conn) {
  const body = h("div", { class: "resources-body" });
  const hide = h("button", { type: "button", class: "secondary", text: t("crisis.hide") });
  const node = h("section", { class: "resources", id: "resources", "aria-labelledby": "resources-title", hidden: true },
    h("h2", { id: "resources-title", text: t("crisis.title") }), body, hide);
  hide.addEventListener("click", () => { node.hidden = true; });
  conn.on("resources", (frame) => {
    const lines = Array.isArray(frame.lines) ? frame.lines : [];
    fill(body,
      h("p", { text: t("crisis.message") }),
      h("p", { class: "urgent", text: t("crisis.emergency") }),
      lines.length ? h("ul", { class: "lines", lang: frame.locale || null }, lines.map(lineItem)) : null);
    node.hidden = false;
    announce(t("crisis.announce"));
    node.scrollIntoView?.({ block: "start" });
  });
  return { node };
}
