// Entry point: find a token (URL fragment, this tab's sessionStorage, demo sign-in or a pasted one),
// connect, and show the page for the role the server says we have.
//
// Tokens expire, and a session does not outlive its token: before exp the server asks for a fresh one
// (token_expiring) and the connection gets it from refreshToken() below: the deployment's own sign-in
// when the page defines `window.aftertalkAuth = { refresh: async () => "<fresh token>" }` (for the same
// user and role; load it before app.js), otherwise the demo sign-in in demo mode.  With neither, the
// person is asked to sign in again when the token runs out.

import { alertsFor } from "./js/alerts.js";
import { currentLocale, localePicker, localeTag, preferredLocale, t, useLocale } from "./js/i18n.js";
import { moderatorPage } from "./js/moderator.js";
import { patientPage } from "./js/patient.js";
import { Connection } from "./js/protocol.js";
import { survivorPage } from "./js/survivor.js";
import { fill, h, isolate, labeller } from "./js/ui.js";

const TOKEN_KEY = "aftertalk.token";
const main = document.getElementById("main");
const banner = document.getElementById("conn-banner");
const who = document.getElementById("who");

const ROLES = () => [
  ["patient", t("signin.role.patient"), t("signin.role.patient.hint")],
  ["survivor", t("signin.role.survivor"), t("signin.role.survivor.hint")],
  ["moderator", t("signin.role.moderator"), t("signin.role.moderator.hint")],
];
const ROLE_NAME = () => ({ patient: t("role.patient"), survivor: t("role.survivor"), moderator: t("role.moderator") });

/** A deployment's sign-in can hand us a token as /#token=... ; we keep it for this tab only. */
function tokenFromFragment() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const token = params.get("token");
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
}

async function demoEnabled() {
  try {
    return Boolean((await (await fetch("/api/client-config", { cache: "no-store" })).json()).demo);
  } catch {
    return false;
  }
}

async function signIn(notice) {
  fill(who);
  const demo = await demoEnabled();
  const status = h("p", { class: "error-note", role: "alert", text: notice || "" });
  const picker = localePicker(h, async (code) => { await useLocale(code); signIn(status.textContent); document.getElementById("signin-locale")?.focus(); },
    { id: "signin-locale" });
  const children = [picker, h("h2", { id: "signin-title", text: t("signin.title") }),
    h("p", { class: "lead", text: t("signin.lead") }),
    status];

  if (demo) {
    const name = h("input", { type: "text", id: "name", maxLength: 40, required: true, autocomplete: "nickname" });
    const choices = ROLES().map(([value, label, hint], i) => {
      const input = h("input", { type: "radio", name: "role", value, id: `role-${value}`, checked: i === 0 });
      return h("div", { class: "role-choice" }, input,
        h("label", { for: input.id }, h("strong", { text: label }), h("span", { class: "hint", text: hint })));
    });
    // a demo facilitator (a survivor who may create and lead groups): the token then carries the claim
    const facilitator = h("input", { type: "checkbox", id: "facilitator", "aria-describedby": "facilitator-hint" });
    const facilitatorRow = h("div", { class: "check facilitator-choice", hidden: true }, facilitator,
      h("div", {}, h("label", { for: "facilitator", text: t("signin.facilitator") }),
        h("p", { class: "hint", id: "facilitator-hint", text: t("signin.facilitator.hint") })));
    const form = h("form", { class: "signin-demo" },
      h("fieldset", {}, h("legend", { text: t("signin.who") }), choices),
      facilitatorRow,
      h("div", { class: "field" }, h("label", { for: "name", text: t("signin.name") }),
        h("p", { class: "hint", id: "name-hint", text: t("signin.name.hint") }), name),
      h("button", { type: "submit", class: "primary", text: t("signin.continue") }),
      h("p", { class: "hint", text: t("signin.demo") }));
    name.setAttribute("aria-describedby", "name-hint");
    const roleNow = () => form.querySelector("input[name=role]:checked")?.value;
    form.addEventListener("change", () => { facilitatorRow.hidden = roleNow() !== "survivor"; });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const role = roleNow();
      const asked = { role, name: name.value.trim(), locale: localeTag() };
      if (role === "survivor" && facilitator.checked) asked.facilitator = true;
      try {
        const res = await fetch("/api/demo-token", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(asked) });
        if (!res.ok) throw new Error(String(res.status));
        const body = await res.json();
        sessionStorage.setItem(TOKEN_KEY, body.token);
        start(body.token);
      } catch (err) {
        status.textContent = t("signin.failed", { reason: err.message });
      }
    });
    children.push(form);
  }

  const pasted = h("textarea", { id: "token", rows: 3, spellcheck: false, autocomplete: "off" });
  const tokenForm = h("form", { class: "signin-token" },
    h("label", { for: "token", text: t("signin.token") }), pasted,
    h("button", { type: "submit", class: demo ? "secondary" : "primary", text: t("signin.token.use") }));
  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = pasted.value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    start(token);
  });
  children.push(h("details", { class: "token-box", open: !demo || undefined },
    h("summary", { text: t("signin.token.have") }), tokenForm));
  fill(main, h("section", { class: "card signin", "aria-labelledby": "signin-title" }, children));
  if (!notice || !main.contains(document.activeElement)) main.querySelector("input[type=radio], input, textarea")?.focus();
}

function showBanner({ state, retryInMs }) {
  if (state === "reconnecting") {
    banner.hidden = false;
    banner.className = "banner warn";
    banner.textContent = navigator.onLine === false ? t("conn.offline") : t("conn.reconnecting");
    if (retryInMs > 3000) banner.textContent += ` ${t("conn.next_try", { seconds: Math.round(retryInMs / 1000) })}`;
  } else if (state === "connecting") {
    banner.hidden = false;
    banner.className = "banner";
    banner.textContent = t("conn.connecting");
  } else {
    banner.hidden = true;
    banner.textContent = "";
  }
}

/** Language names the server has no translation for: the browser's own (Intl.DisplayNames), codes unchanged. */
function languageNames(vocab) {
  let names = null;
  try { names = new Intl.DisplayNames([currentLocale()], { type: "language" }); } catch { return; }
  for (const entry of vocab.languages || []) {
    if (!entry.fallback) continue;
    const name = names.of(entry.code);
    if (!name || name === entry.code) continue;
    entry.label = name.charAt(0).toLocaleUpperCase(currentLocale()) + name.slice(1);
    entry.lang = currentLocale();
    delete entry.fallback;
  }
}

/** The claims of a token, read without checking anything (the server checks): who to refresh for. */
function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

/** A fresh token for the user and role of `current`, from the sign-in source; null when there is none. */
async function refreshToken(current) {
  const hook = window.aftertalkAuth?.refresh;
  if (typeof hook === "function") return (await hook()) || null;
  if (!(await demoEnabled())) return null;
  const { sub, role, name, facilitator } = claimsOf(current);
  if (!sub || !role) return null;
  const res = await fetch("/api/demo-token", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ role, name: name || role, id: sub, locale: localeTag(), ...(facilitator === true ? { facilitator: true } : {}) }), cache: "no-store" });
  if (!res.ok) return null;
  return (await res.json()).token || null;
}

function signOut(conn) {
  conn?.stop();
  sessionStorage.removeItem(TOKEN_KEY);
  window.location.assign(window.location.pathname);
}

async function start(token) {
  fill(main, h("p", { class: "hint", text: t("conn.connecting") }));
  let vocab = {};
  try { vocab = await (await fetch(`/api/vocabulary?lang=${encodeURIComponent(currentLocale())}`)).json(); } catch { /* pages cope with an empty vocabulary */ }
  languageNames(vocab);
  const conn = new Connection(token, { refresh: () => refreshToken(conn.token), locale: localeTag() });
  conn.on("token", (fresh) => sessionStorage.setItem(TOKEN_KEY, fresh));   // a reload signs in with it
  let page = null;
  conn.on("state", (s) => {
    showBanner(s);
    if (s.state !== "closed") return;
    if (s.reason === "signed_out") {
      sessionStorage.removeItem(TOKEN_KEY);
      signIn(s.message === "token expired" ? t("signin.expired") : t("signin.invalid"));
    } else if (s.reason === "suspended") {
      sessionStorage.removeItem(TOKEN_KEY);
      fill(who);
      fill(main, h("section", { class: "card" }, h("h2", { text: t("paused.title") }),
        h("p", { text: t("paused.body") })));
    }
  });
  conn.on("welcome", (frame) => {
    if (page) return;
    page = frame.user.role;
    const alerts = alertsFor(page);
    const context = { vocabulary: vocab, label: labeller(vocab), token: () => conn.token, alerts };   // refreshed
    const roleName = ROLE_NAME()[frame.user.role] || frame.user.role;
    fill(who, h("span", {}, isolate(frame.user.name), ` · ${frame.user.facilitator ? t("groups.member.facilitator_role", { role: roleName }) : roleName}`),
      localePicker(h, () => window.location.reload(), { compact: true }),
      h("button", { type: "button", class: "link", text: t("signout"), on: { click: () => signOut(conn) } }));
    const root = h("div", { class: `page page-${page}` });
    fill(main, root);
    if (page === "patient") patientPage(root, conn, context);
    else if (page === "survivor") survivorPage(root, conn, context);
    else moderatorPage(root, conn, context);
    conn.emit("welcome", frame);   // the page was built after the first welcome: let it see it too
    if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });
  });
  conn.start();
  window.aftertalk = conn;        // handy in the console and in the browser tests
}

// no offline mode: a chat needs the connection, and the page says so when it has none
function offlineBanner() {
  if (navigator.onLine !== false) { if (banner.dataset.offline) { banner.hidden = true; delete banner.dataset.offline; } return; }
  banner.hidden = false;
  banner.className = "banner warn";
  banner.dataset.offline = "1";
  banner.textContent = t("conn.offline");
}
window.addEventListener("offline", offlineBanner);
window.addEventListener("online", offlineBanner);

tokenFromFragment();
await useLocale(preferredLocale());
offlineBanner();
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
else signIn();
