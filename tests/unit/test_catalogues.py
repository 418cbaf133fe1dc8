"""The web client's message catalogues (gateway/static/locales/*.json) and the translated vocabulary.

Every catalogue has every key of the English one, or lists it in ``_fallback`` (shown in English on
purpose); none has keys English lacks; the placeholders of a translation are the English ones; plural
forms name the categories of Intl.PluralRules.  Every key the code uses (``t("…")``, ``tx("…")``,
``data-i18n="…"``) exists in English.  The vocabulary's translations name only real codes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from matcher.vocabulary import load_vocabulary, translations

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "gateway" / "static"
LOCALES = STATIC / "locales"
SHIPPED = {"en", "es", "fr", "de", "it", "pt", "nl", "pl", "ru", "tr", "ar", "zh", "ja"}
PLURAL_CATEGORIES = {"zero", "one", "two", "few", "many", "other"}
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def catalogue(code: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads((LOCALES / f"{code}.json").read_text(encoding="utf-8"))
    return doc


def messages(doc: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def placeholders(value: object) -> set[str]:
    texts = value.values() if isinstance(value, dict) else [value]
    return {name for text in texts for name in PLACEHOLDER.findall(str(text))}


def keys_used_in_code() -> set[str]:
    used: set[str] = set()
    for path in [*STATIC.glob("*.js"), *STATIC.glob("js/*.js")]:
        used |= set(re.findall(r"\btx?\(\s*\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    used |= set(re.findall(r'data-i18n="([^"]+)"', (STATIC / "index.html").read_text(encoding="utf-8")))
    return used


def test_every_shipped_locale_has_a_catalogue_and_a_picker_entry():
    assert {p.stem for p in LOCALES.glob("*.json")} >= SHIPPED
    picker = (STATIC / "js" / "i18n.js").read_text(encoding="utf-8")
    for code in SHIPPED:
        assert f'["{code}", ' in picker, f"{code} is not offered in the language picker"


def test_every_key_the_code_uses_is_in_english():
    english = messages(catalogue("en"))
    used = keys_used_in_code()
    assert used, "no keys found: has the t() helper been renamed?"
    missing = sorted(used - set(english))
    assert not missing, f"used in the code but missing from en.json: {missing}"


@pytest.mark.parametrize("code", sorted(SHIPPED - {"en"}))
def test_each_catalogue_has_every_key_or_marks_it_as_a_fallback(code):
    english = messages(catalogue("en"))
    doc = catalogue(code)
    own = messages(doc)
    fallback = doc.get("_fallback", [])
    assert isinstance(fallback, list)
    assert not set(fallback) - set(english), f"{code}: _fallback names keys English lacks"
    assert not set(fallback) & set(own), f"{code}: a key is both translated and marked as a fallback"
    missing = sorted(set(english) - set(own) - set(fallback))
    assert not missing, f"{code}.json lacks (translate, or list in _fallback): {missing}"
    extra = sorted(set(own) - set(english))
    assert not extra, f"{code}.json has keys English lacks: {extra}"


@pytest.mark.parametrize("code", sorted(SHIPPED))
def test_translations_keep_the_placeholders_and_plural_forms(code):
    english = messages(catalogue("en"))
    for key, value in messages(catalogue(code)).items():
        assert placeholders(value) == placeholders(english[key]), f"{code}: {key} changes the placeholders"
        if isinstance(english[key], dict):
            assert isinstance(value, dict) and "other" in value, f"{code}: {key} needs plural forms with 'other'"
            assert set(value) <= PLURAL_CATEGORIES, f"{code}: {key} names an unknown plural category"
        else:
            assert isinstance(value, str) and value.strip(), f"{code}: {key} is empty"


@pytest.mark.parametrize("code", sorted(SHIPPED - {"en"}))
def test_the_crisis_panel_is_translated_and_says_to_call_the_local_emergency_number(code):
    doc = catalogue(code)
    own = messages(doc)
    for key in ("crisis.title", "crisis.message", "crisis.emergency", "crisis.hide"):
        assert key in own and key not in doc.get("_fallback", []), f"{code}: {key} must be translated"
        assert own[key] != catalogue("en")[key]


def test_vocabulary_translations_name_only_real_codes_and_codes_never_change():
    english = load_vocabulary()
    for path in (ROOT / "matcher" / "data").glob("vocabulary.*.json"):
        lang = path.name.split(".")[1]
        labels = translations(lang)          # raises on an unknown code
        assert labels, f"{path.name} is empty"
        shown = english.localised(lang)
        for section in ("diagnoses", "side_effects", "languages"):
            assert [e["code"] for e in shown[section]] == list(getattr(english, section))
            for entry in shown[section]:
                assert entry["lang"] in (lang, "en")
                assert entry.get("fallback", False) == (entry["lang"] == "en")
