// The crisis resources panel, shown when the server sends {"type": "resources", lines, message}.
// The lines come from the deployment's configuration, but they are still drawn as text, and only
// http(s) links and dialable numbers become links.

import { announce, fill, h, safeUrl } from "./ui.js";

function lineItem(line) {
  const parts = [h("strong", { text: line.name || "Support line" })];
  if (line.phone) {
    const dial = String(line.phone).replace(/[^0-9+]/g, "");
    parts.push(" — ", dial ? h("a", { href: `tel:${dial}`, text: String(line.phone) }) : String(line.phone));
  }
  if (line.text) parts.push(h("span", { class: "hint", text: ` ${line.text}` }));
  const url = line.url && safeUrl(line.url);
  if (url) parts.push(" ", h("a", { href: url, target: "_blank", rel: "noopener noreferrer", text: "Website" }));
  return h("li", {}, parts);
}

export function resourcesPanel(conn) {
  const body = h("div", { class: "resources-body" });
  const hide = h("button", { type: "button", class: "secondary", text: "Hide" });
  const node = h("section", { class: "resources", id: "resources", "aria-labelledby": "resources-title", hidden: true },
    h("h2", { id: "resources-title", text: "You don't have to face this alone" }), body, hide);
  hide.addEventListener("click", () => { node.hidden = true; });
  conn.on("resources", (frame) => {
    const lines = Array.isArray(frame.lines) ? frame.lines : [];
    fill(body,
      h("p", { text: frame.message || "If you might act on thoughts of ending your life, call your local emergency number now." }),
      lines.length ? h("ul", { class: "lines" }, lines.map(lineItem)) : null);
    node.hidden = false;
    announce("Support resources are shown at the top of the page.");
    node.scrollIntoView?.({ block: "start" });
  });
  return { node };
}
