// The short profile both peers fill in: a diagnosis, side effects or life-after-treatment topics,
// and languages, all from the service's controlled vocabulary (GET /api/vocabulary).

import { currentLocale, list, t } from "./i18n.js";
import { checkboxGroup, field, h } from "./ui.js";

function browserLanguage(vocabulary) {
  const codes = new Set((vocabulary.languages || []).map((l) => l.code));
  const mine = currentLocale().slice(0, 2).toLowerCase();
  return codes.has(mine) ? mine : "en";
}

/** Remembered per role in sessionStorage so "talk again" does not mean filling it in again. */
export function savedProfile(role) {
  try { return JSON.parse(sessionStorage.getItem(`aftertalk.profile.${role}`) || "null"); } catch { return null; }
}

export function saveProfile(role, profile) {
  sessionStorage.setItem(`aftertalk.profile.${role}`, JSON.stringify(profile));
}

/**
 * Build the form's fields.  Returns {node, value(), check()}: check() gives an error text or "".
 * copy: {diagnosis, sideEffects, languages} headings tuned to who is filling it in.
 */
export function profileFields(vocabulary, initial, copy) {
  const start = initial || { diagnoses: [], side_effects: [], languages: [browserLanguage(vocabulary)] };
  const diagnosis = h("select", {},
    h("option", { value: "", text: t("profile.no_diagnosis") }),
    (vocabulary.diagnoses || []).map((d) => h("option", { value: d.code, text: d.label, lang: d.fallback ? "en" : null, selected: start.diagnoses?.[0] === d.code })));
  const dx = field(copy.diagnosis, diagnosis);
  const effects = checkboxGroup(copy.sideEffects, vocabulary.side_effects || [], start.side_effects || [], { name: "side_effects" });
  const languages = checkboxGroup(copy.languages, vocabulary.languages || [], start.languages || [], { name: "languages" });
  const effectsSummary = h("summary");
  const languagesSummary = h("summary");
  const labels = (kind, codes) => codes.map((c) => (vocabulary[kind] || []).find((i) => i.code === c)?.label || c);
  const summarise = () => {
    const fx = effects.values();
    effectsSummary.textContent = fx.length ? t("profile.summary", { what: copy.sideEffectsSummary, chosen: list(labels("side_effects", fx)) }) : copy.sideEffectsSummary;
    const langs = languages.values();
    languagesSummary.textContent = t("profile.summary", { what: copy.languagesSummary, chosen: langs.length ? list(labels("languages", langs)) : t("profile.none_chosen") });
  };
  effects.set.addEventListener("change", summarise);
  languages.set.addEventListener("change", summarise);
  summarise();
  const node = h("div", { class: "profile-fields" },
    dx.row,
    h("details", { class: "pick" }, effectsSummary, effects.set),
    h("details", { class: "pick" }, languagesSummary, languages.set));
  const value = () => ({
    diagnoses: diagnosis.value ? [diagnosis.value] : [],
    side_effects: effects.values(),
    languages: languages.values(),
  });
  const check = () => {
    const v = value();
    if (!v.diagnoses.length && !v.side_effects.length) return t("profile.need_topic");
    if (!v.languages.length) return t("profile.need_language");
    return "";
  };
  const set = (profile) => {
    diagnosis.value = profile.diagnoses?.[0] || "";
    effects.setValues(profile.side_effects || []);
    languages.setValues(profile.languages || []);
  };
  return { node, value, check, set };
}
