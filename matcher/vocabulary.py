"""The closed vocabulary peers are matched on: diagnoses, side effects / life-after-treatment
topics, and spoken languages.

The data ships with the package (``matcher/data/vocabulary.json``) so the matcher, the API and
the front end agree on one list of codes. Codes are stable identifiers stored in profiles and
queues; labels are English display text and may be reworded freely.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

_SECTIONS = ("diagnoses", "side_effects", "languages")


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
