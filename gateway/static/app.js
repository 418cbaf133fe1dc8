// Entry point: find a token (URL fragment, this tab's sessionStorage, demo sign-in or a pasted one),
// connect, and show the page for the role the server says we have.
//
// Tokens expire, and a session does not outlive its token: before exp the server asks for a fresh one
// (token_expiring) and the connection gets it from refreshToken() below: the deployment's own sign-in
// when the page defines `window.aftertalkAuth = { refresh: async () => "<fresh token>" }` (for the same
// user and role; load it before app.js), otherwise the demo sign-in in demo mode.  With neither, the
// person is asked to sign in again when the token runs out.

import { moderatorPage } from "./js/moderator.js";
import { patientPage } from "./js/patient.js";
import { Connection } from "./js/protocol.js";
import { survivorPage } from "./js/survivor.js";
import { fill, h, isolate, labeller } from "./js/ui.js";

const TOKEN_KEY = "aftertalk.token";
const main = document.getElementById("main");
const banner = document.getElementById("conn-banner");
const who = document.getElementById("who");

const ROLES = [
  ["patient", "I'd like to talk", "I am being treated for cancer, or was recently, and would like to talk with someone who has been there."],
  ["survivor", "I'm a volunteer survivor", "I have been through treatment and listen to people who are going through it now."],
  ["moderator", "I'm a moderator", "I look after the safety of conversations."],
];

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
  const children = [h("h2", { id: "signin-title", text: "Welcome to Aftertalk" }),
    h("p", { class: "lead", text: "Real-time, one-on-one conversations between people newly treated for cancer and volunteers who have been through it." }),
    status];

  if (demo) {
    const name = h("input", { type: "text", id: "name", maxLength: 40, required: true, autocomplete: "nickname" });
    const choices = ROLES.map(([value, label, hint], i) => {
      const input = h("input", { type: "radio", name: "role", value, id: `role-${value}`, checked: i === 0 });
      return h("div", { class: "role-choice" }, input,
        h("label", { for: input.id }, h("strong", { text: label }), h("span", { class: "hint", text: hint })));
    });
    const form = h("form", { class: "signin-demo" },
      h("fieldset", {}, h("legend", { text: "Who are you today?" }), choices),
      h("div", { class: "field" }, h("label", { for: "name", text: "A first name or pseudonym" }),
        h("p", { class: "hint", id: "name-hint", text: "This is what the other person sees. No real name needed." }), name),
      h("button", { type: "submit", class: "primary", text: "Continue" }),
      h("p", { class: "hint", text: "Demo mode: anyone can pick any role. A real deployment signs people in with its own provider." }));
    name.setAttribute("aria-describedby", "name-hint");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const role = form.querySelector("input[name=role]:checked").value;
      try {
        const res = await fetch("/api/demo-token", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ role, name: name.value.trim() }) });
        if (!res.ok) throw new Error(String(res.status));
        const body = await res.json();
        sessionStorage.setItem(TOKEN_KEY, body.token);
        start(body.token);
      } catch (err) {
        status.textContent = `Could not sign in (${err.message}). Please try again.`;
      }
    });
    children.push(form);
  }

  const pasted = h("textarea", { id: "token", rows: 3, spellcheck: false, autocomplete: "off" });
  const tokenForm = h("form", { class: "signin-token" },
    h("label", { for: "token", text: "Sign-in token" }), pasted,
    h("button", { type: "submit", class: demo ? "secondary" : "primary", text: "Use this token" }));
  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = pasted.value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    start(token);
  });
  children.push(h("details", { class: "token-box", open: !demo || undefined },
    h("summary", { text: "I have a sign-in token from my organisation" }), tokenForm));
  fill(main, h("section", { class: "card signin", "aria-labelledby": "signin-title" }, children));
  main.querySelector("input, textarea")?.focus();
}

function showBanner({ state, retryInMs }) {
  if (state === "reconnecting") {
    banner.hidden = false;
    banner.className = "banner warn";
    banner.textContent = "Reconnecting… Messages you write now will be sent when the connection is back.";
    if (retryInMs > 3000) banner.textContent += ` Next try in ${Math.round(retryInMs / 1000)} s.`;
  } else if (state === "connecting") {
    banner.hidden = false;
    banner.className = "banner";
    banner.textContent = "Connecting…";
  } else {
    banner.hidden = true;
    banner.textContent = "";
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
  const { sub, role, name } = claimsOf(current);
  if (!sub || !role) return null;
  const res = await fetch("/api/demo-token", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ role, name: name || role, id: sub }), cache: "no-store" });
  if (!res.ok) return null;
  return (await res.json()).token || null;
}

function signOut(conn) {
  conn?.stop();
  sessionStorage.removeItem(TOKEN_KEY);
  window.location.assign(window.location.pathname);
}

async function start(token) {
  fill(main, h("p", { class: "hint", text: "Connecting…" }));
  let vocab = {};
  try { vocab = await (await fetch("/api/vocabulary")).json(); } catch { /* pages cope with an empty vocabulary */ }
  const conn = new Connection(token, { refresh: () => refreshToken(conn.token) });
  conn.on("token", (fresh) => sessionStorage.setItem(TOKEN_KEY, fresh));   // a reload signs in with it
  let page = null;
  conn.on("state", (s) => {
    showBanner(s);
    if (s.state !== "closed") return;
    if (s.reason === "signed_out") {
      sessionStorage.removeItem(TOKEN_KEY);
      signIn(s.message === "token expired" ? "Your sign-in has expired. Please sign in again."
        : "Your sign-in is not valid any more. Please sign in again.");
    } else if (s.reason === "suspended") {
      sessionStorage.removeItem(TOKEN_KEY);
      fill(who);
      fill(main, h("section", { class: "card" }, h("h2", { text: "Your account is paused" }),
        h("p", { text: "A moderator has paused your account. If you think this is a mistake, contact the team that invited you." })));
    }
  });
  conn.on("welcome", (frame) => {
    if (page) return;
    page = frame.user.role;
    const context = { vocabulary: vocab, label: labeller(vocab), token: () => conn.token };   // refreshed
    fill(who, h("span", {}, isolate(frame.user.name), ` · ${frame.user.role}`),
      h("button", { type: "button", class: "link", text: "Sign out", on: { click: () => signOut(conn) } }));
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

tokenFromFragment();
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
else signIn();
