// The page's language: message catalogues (locales/<code>.json), placeholders, plural forms, the
// locale choice (remembered), <html lang/dir>, and Intl formatting of times, ages and durations.
//
// A catalogue maps a key to a string, or to plural forms {"one": ..., "other": ...} chosen with
// Intl.PluralRules by the "count" parameter.  "{name}" placeholders are filled from the parameters.
// A key a catalogue lists in "_fallback" (or lacks) is shown in English.  Text goes in as text only:
// tx() returns strings and nodes (e.g. an isolated name) for h()/fill(), never markup.

export const LOCALES = [
  ["en", "English"], ["es", "Español"], ["fr", "Français"], ["de", "Deutsch"], ["it", "Italiano"],
  ["pt", "Português"], ["nl", "Nederlands"], ["pl", "Polski"], ["ru", "Русский"], ["tr", "Türkçe"],
  ["ar", "العربية"], ["zh", "中文"], ["ja", "日本語"],
];
const RTL = new Set(["ar", "he", "fa", "ur"]);
const KEY = "aftertalk.locale";

let locale = "en";
let messages = {};
let english = {};
let plurals = new Intl.PluralRules("en");

/** The saved choice, else the first of navigator.languages we have (exact, then by language), else en. */
export function preferredLocale() {
  const have = new Set(LOCALES.map(([code]) => code));
  let saved = null;
  try { saved = localStorage.getItem(KEY); } catch { /* storage may be off */ }
  if (saved && have.has(saved)) return saved;
  for (const tag of navigator.languages?.length ? navigator.languages : [navigator.language || "en"]) {
    const base = String(tag).toLowerCase().split("-")[0];
    if (have.has(base)) return base;
  }
  return "en";
}

export function rememberLocale(code) {
  try { localStorage.setItem(KEY, code); } catch { /* not remembered, still used */ }
}

export function currentLocale() {
  return locale;
}

/** The locale with the browser's region when it has one for this language ("es-MX"): picks crisis lines. */
export function localeTag() {
  for (const tag of navigator.languages || []) {
    if (String(tag).toLowerCase().split("-")[0] === locale && /^[a-z]{2,3}-([a-z]{2}|\d{3})$/i.test(tag)) return tag;
  }
  return locale;
}

export function isRtl(code = locale) {
  return RTL.has(code.split("-")[0]);
}

async function catalogue(code) {
  const res = await fetch(`locales/${code}.json`, { cache: "no-cache" });
  if (!res.ok) throw new Error(`no catalogue for ${code}`);
  return res.json();
}

/** Load a locale's catalogue (English underneath) and set <html lang> and dir; static [data-i18n] text too. */
export async function useLocale(code) {
  english = await catalogue("en");
  let own = english;
  if (code !== "en") {
    try { own = await catalogue(code); } catch { code = "en"; }
  }
  const fallback = new Set(own._fallback || []);
  messages = Object.fromEntries(Object.entries(own).filter(([k]) => !k.startsWith("_") && !fallback.has(k)));
  locale = code;
  plurals = new Intl.PluralRules(code);
  document.documentElement.lang = code;
  document.documentElement.dir = isRtl(code) ? "rtl" : "ltr";
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  return code;
}

function lookup(key, params) {
  let value = messages[key] ?? english[key];
  if (value === undefined) return key;
  if (typeof value === "object") {
    const n = Number(params?.count ?? 0);
    const forms = key in messages ? value : english[key];
    value = forms[(key in messages ? plurals : new Intl.PluralRules("en")).select(n)] ?? forms.other;
  }
  return value;
}

function number(value) {
  return typeof value === "number" ? new Intl.NumberFormat(locale).format(value) : value;
}

/** The message for key, with {placeholders} filled in (numbers in the locale's digits). */
export function t(key, params = {}) {
  return lookup(key, params).replace(/\{(\w+)\}/g, (all, name) => (name in params ? String(number(params[name])) : all));
}

/** Like t(), but placeholders may be nodes (an isolated name): an array for h()/fill(). */
export function tx(key, params = {}) {
  const out = [];
  for (const [i, piece] of lookup(key, params).split(/\{(\w+)\}/).entries()) {
    if (i % 2 === 0) { if (piece) out.push(piece); } else out.push(piece in params ? number(params[piece]) : `{${piece}}`);
  }
  return out;
}

/** A list "a, b and c" in the locale's way. */
export function list(items) {
  return new Intl.ListFormat(locale, { style: "short", type: "unit" }).format(items);
}

/** A list "a, b or c" in the locale's way. */
export function listOr(items) {
  return new Intl.ListFormat(locale, { style: "long", type: "disjunction" }).format(items);
}

/** "within 24 hours", as a unit: "24 hours" in the locale's words. */
export function hours(n) {
  return unit(n, "hour", "long");
}

export function clock(ts) {
  return new Date(ts).toLocaleTimeString(locale, { hour: "2-digit", minute: "2-digit" });
}

export function dateTime(ts) {
  return new Date(ts).toLocaleString(locale, { dateStyle: "short", timeStyle: "short" });
}

/** "just now", "3 minutes ago", "2 hours ago" for a millisecond timestamp. */
export function ago(ts, now = Date.now()) {
  const s = Math.max(0, Math.round((now - ts) / 1000));
  const rtf = new Intl.RelativeTimeFormat(locale, { numeric: "auto", style: "long" });
  if (s < 45) return rtf.format(0, "second");
  const m = Math.round(s / 60);
  if (m < 60) return rtf.format(-m, "minute");
  const hrs = Math.round(m / 60);
  if (hrs < 48) return rtf.format(-hrs, "hour");
  return rtf.format(-Math.round(hrs / 24), "day");
}

function unit(value, name, display = "short") {
  return new Intl.NumberFormat(locale, { style: "unit", unit: name, unitDisplay: display }).format(value);
}

/** "about 40 sec", "about 3 min" for a wait estimate in seconds. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return t("time.moment");
  if (seconds < 60) return t("time.about", { duration: unit(Math.max(5, Math.round(seconds / 5) * 5), "second") });
  return t("time.about", { duration: unit(Math.round(seconds / 60), "minute") });
}

/** "15 minutes", in the locale's words (a mute, a session's length). */
export function minutesText(n) {
  return unit(n, "minute", "long");
}

/** A countdown's seconds: "12 sec". */
export function secondsLeft(seconds) {
  return unit(seconds, "second");
}

/** The language picker: a labelled <select> of every shipped locale, in its own language. */
export function localePicker(h, onPick, { id = "locale-picker", compact = false } = {}) {
  const select = h("select", { id, on: { change: () => { rememberLocale(select.value); onPick(select.value); } } },
    LOCALES.map(([code, name]) => h("option", { value: code, lang: code, text: name, selected: code === locale })));
  return h("div", { class: compact ? "locale compact" : "field locale" },
    h("label", { for: id, class: compact ? "visually-hidden" : null, text: t("locale.label") }), select);
}
