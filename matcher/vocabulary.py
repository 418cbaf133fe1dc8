"""The closed vocabulary peers are matched on: diagnoses, side effects / life-after-treatment
topics, and spoken languages.

The data ships with the package (``matcher/data/vocabulary.json``) so the matcher, the API and
the front end agree on one list of codes. Codes are stable identifiers stored in profiles and
queues; labels are English display text and may be reworded freely.

Translated labels live beside it, one file per language (``matcher/data/vocabulary.<lang>.json``:
``{section: {code: label}}``).  :meth:`Vocabulary.localised` gives every entry in the asked language
where a translation exists and in English otherwise, and says which (``"lang"``).  Codes never change
with the language: a translation file may only name codes the English vocabulary has.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

_SECTIONS = ("diagnoses", "side_effects", "languages")
_LANG = re.compile(r"^[a-z]{2,3}$")


@dataclass(frozen=True)
class Vocabulary:
    """code -> label for each section, in the file's (display) order."""

    diagnoses: dict[str, str]
    side_effects: dict[str, str]
    languages: dict[str, str]

    def as_json(self) -> dict[str, list[dict[str, str]]]:
        """The API shape: ``{section: [{"code", "label"}, ...]}``."""
        return {
            section: [{"code": code, "label": label} for code, label in getattr(self, section).items()]
            for section in _SECTIONS
        }

    def localised(self, lang: str | None) -> dict[str, Any]:
        """The API shape in ``lang``: each entry ``{"code", "label", "lang"}``, ``"lang"`` saying which
        language the label is in (``"en"`` plus ``"fallback": true`` where no translation exists)."""
        want = language_of(lang)
        labels = translations(want) if want else {}
        out: dict[str, Any] = {"lang": want or "en"}
        for section in _SECTIONS:
            entries: list[dict[str, Any]] = []
            for code, english in getattr(self, section).items():
                label = labels.get(section, {}).get(code)
                if label:
                    entries.append({"code": code, "label": label, "lang": want})
                else:
                    entry: dict[str, Any] = {"code": code, "label": english, "lang": "en"}
                    if want and want != "en":
                        entry["fallback"] = True
                    entries.append(entry)
            out[section] = entries
        return out


def language_of(raw: str | None) -> str:
    """The language part of a locale tag ("pt-BR" -> "pt"); "" for anything that is not one."""
    base = (raw or "").strip().replace("_", "-").split("-")[0].lower()
    return base if _LANG.match(base) else ""


@functools.cache
def translations(lang: str) -> dict[str, dict[str, str]]:
    """The translated labels of ``lang`` (``{}`` when none ship), checked against the English codes."""
    if lang == "en" or not _LANG.match(lang):
        return {}
    path = resources.files("matcher") / "data" / f"vocabulary.{lang}.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text(encoding="utf-8"))
    english = load_vocabulary()
    out: dict[str, dict[str, str]] = {}
    for section in _SECTIONS:
        labels = doc.get(section, {})
        unknown = set(labels) - set(getattr(english, section))
        if unknown:
            raise ValueError(f"vocabulary.{lang}.json: unknown {section} code(s) {sorted(unknown)}")
        out[section] = {code: str(label) for code, label in labels.items() if str(label).strip()}
    return out


def _parse_section(doc: dict[str, Any], section: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for item in doc[section]:
        code, label = item["code"], item["label"]
        if code in entries:
            raise ValueError(f"vocabulary: duplicate {section} code {code!r}")
        entries[code] = label
    return entries


@functools.cache
def load_vocabulary() -> Vocabulary:
    """Read and validate the packaged vocabulary (once per process)."""
    raw = (resources.files("matcher") / "data" / "vocabulary.json").read_text(encoding="utf-8")
    doc = json.loads(raw)
    return Vocabulary(**{section: _parse_section(doc, section) for section in _SECTIONS})
