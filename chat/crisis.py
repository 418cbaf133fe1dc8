"""Crisis resources: what the author of a crisis-flagged message is shown.  Pure: no I/O.

A deployment configures its lines in ``AFTERTALK_CRISIS_LINES`` as a JSON list of
``{"name", "phone"?, "url"?, "text"?}`` (at least one of the three besides the name), the same
for everyone, or as an object keyed by locale or region, with a default::

    {"default": [...], "es": [...], "es-MX": [...], "GB": [...]}

The author's locale (``es-MX``: from the hello or the token) picks the most specific list: the
exact locale, then the region (``MX``), then the language (``es``), then ``default``.
Without configuration (or without a ``default``) the author is shown one generic entry telling
them, in their language (``chat/data/crisis.json``), to call their local emergency services: a
wrong national number is worse than none, so the default names no country's line.  The list is
parsed once at start-up; a malformed value
stops the gateway with a message saying what is wrong, rather than leaving a
person in crisis with nothing.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

MAX_LINES = 20
MAX_FIELD = 500
MESSAGE = ("It sounds like you may be going through something very hard right now. You are not alone, and "
           "you do not have to wait: people are ready to talk with you at any hour. If you might act on "
           "thoughts of ending your life or hurting yourself, please reach out now.")


@dataclass(frozen=True, slots=True)
class CrisisLine:
    name: str
    phone: str = ""
    url: str = ""
    text: str = ""

    def as_json(self) -> dict[str, str]:
        out = {"name": self.name}
        for field in ("phone", "url", "text"):
            value = getattr(self, field)
            if value:
                out[field] = value
        return out


DEFAULT_LINES: tuple[CrisisLine, ...] = (
    CrisisLine(name="Emergency services",
               text="If you are in immediate danger or might act on thoughts of suicide or self-harm, call your "
                    "local emergency number now (for example 911, 112 or 999), or go to the nearest emergency "
                    "department. Your care team can also put you in touch with a crisis line near you."),
)


_REGION = re.compile(r"^[A-Z]{2}$|^[0-9]{3}$")


class CrisisLines(tuple[CrisisLine, ...]):
    """The default lines (the tuple itself) and, when configured by locale or region, the others.
    ``configured``: the deployment named a default; otherwise the default is the generic entry,
    given in the author's language by :func:`lines_for`."""

    by_key: dict[str, tuple[CrisisLine, ...]]
    configured: bool

    def __new__(cls, default: tuple[CrisisLine, ...], by_key: dict[str, tuple[CrisisLine, ...]] | None = None,
                *, configured: bool = True) -> CrisisLines:
        self = super().__new__(cls, default)
        self.by_key = dict(by_key or {})
        self.configured = configured
        return self


def normalise_locale(raw: Any) -> str:
    """A BCP 47 tag cut to language and region, cased as usual (``es_mx`` -> ``es-MX``); "" if not one."""
    if not isinstance(raw, str) or len(raw) > 35:
        return ""
    parts = raw.strip().replace("_", "-").split("-")
    lang = parts[0].lower()
    if not re.fullmatch(r"[a-z]{2,3}", lang):
        return ""
    region = next((p.upper() for p in parts[1:] if _REGION.match(p.upper())), "")
    return f"{lang}-{region}" if region else lang


def _key(raw: str) -> str:
    """A configuration key: "default", a region ("MX", "419") or a locale ("es", "es-MX"), normalised."""
    if raw == "default" or _REGION.match(raw):
        return raw
    tag = normalise_locale(raw)
    if not tag or tag.lower() != raw.replace("_", "-").lower():
        raise ValueError("crisis lines: expected a JSON list of lines, or an object keyed by \"default\", a locale "
                         f"(\"es\", \"es-MX\") or a region (\"MX\") whose values are such lists; {raw!r} is "
                         "none of these")
    return tag


def _lines(doc: Any, where: str) -> tuple[CrisisLine, ...]:
    if not isinstance(doc, list) or not doc:
        raise ValueError(f"crisis lines{where}: expected a non-empty JSON list of "
                         "{\"name\", \"phone\"?, \"url\"?, \"text\"?}")
    if len(doc) > MAX_LINES:
        raise ValueError(f"crisis lines{where}: at most {MAX_LINES} entries")
    return tuple(_line(i, entry, where) for i, entry in enumerate(doc))


def parse_crisis_lines(raw: str | None) -> CrisisLines:
    """The configured lines, or :data:`DEFAULT_LINES` when ``raw`` is empty.  Raises ValueError."""
    if raw is None or not raw.strip():
        return CrisisLines(DEFAULT_LINES, configured=False)
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"crisis lines: not JSON ({exc.msg} at position {exc.pos})") from None
    if isinstance(doc, dict) and doc:
        by_key: dict[str, tuple[CrisisLine, ...]] = {}
        for raw_key, value in doc.items():
            key = _key(str(raw_key))
            if key in by_key:
                raise ValueError(f"crisis lines: {raw_key!r} is given twice")
            by_key[key] = _lines(value, f"[{raw_key!r}]")
        default = by_key.pop("default", None)
        return CrisisLines(default or DEFAULT_LINES, by_key, configured=default is not None)
    return CrisisLines(_lines(doc, ""))


@functools.cache
def _shipped() -> dict[str, dict[str, str]]:
    """The generic entry and the panel's message in every language shipped (``chat/data/crisis.json``)."""
    doc: dict[str, dict[str, str]] = json.loads(
        (resources.files("chat") / "data" / "crisis.json").read_text(encoding="utf-8"))
    return doc


def lines_for(lines: tuple[CrisisLine, ...], locale: str | None) -> tuple[tuple[CrisisLine, ...], str]:
    """The lines for an author writing in ``locale`` and the language they are given in (see the module)."""
    tag = normalise_locale(locale or "")
    lang, _, region = tag.partition("-")
    shipped = _shipped()
    if isinstance(lines, CrisisLines):
        for key in (tag, region, lang):
            if key and key in lines.by_key:
                return lines.by_key[key], lang or "en"
        if not lines.configured and lang in shipped:
            own = shipped[lang]
            return (CrisisLine(name=own["name"], text=own["text"]),), lang
    return tuple(lines), "en" if tuple(lines) == DEFAULT_LINES else ""     # "": the deployment's, language unknown


def _line(i: int, entry: Any, where: str = "") -> CrisisLine:
    if not isinstance(entry, dict):
        raise ValueError(f"crisis lines{where}[{i}]: expected an object")
    unknown = set(entry) - {"name", "phone", "url", "text"}
    if unknown:
        raise ValueError(f"crisis lines{where}[{i}]: unknown field(s) {', '.join(sorted(unknown))}")
    values: dict[str, str] = {}
    for field in ("name", "phone", "url", "text"):
        value = entry.get(field)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_FIELD:
            raise ValueError(f"crisis lines{where}[{i}].{field}: expected a non-empty string of at most "
                             f"{MAX_FIELD} characters")
        values[field] = value.strip()
    if "name" not in values:
        raise ValueError(f"crisis lines{where}[{i}]: 'name' is required")
    if len(values) == 1:
        raise ValueError(f"crisis lines{where}[{i}]: give at least one of 'phone', 'url' or 'text'")
    if "url" in values and not values["url"].lower().startswith(("https://", "http://")):
        raise ValueError(f"crisis lines{where}[{i}].url: must start with https:// or http://")
    return CrisisLine(**values)


def resources_frame(conversation_id: str, lines: tuple[CrisisLine, ...], locale: str | None = None) -> dict[str, Any]:
    """The ``resources`` frame sent to the author of a crisis-flagged message: the lines for their locale
    (``locale``: the language the lines' words are in) and the message in their language."""
    chosen, lang = lines_for(lines, locale)
    base = normalise_locale(locale or "").partition("-")[0]
    message = _shipped().get(base, {}).get("message", MESSAGE)
    return {"type": "resources", "conversation_id": conversation_id, "message": message,
            "lines": [line.as_json() for line in chosen], **({"locale": lang} if lang else {})}
