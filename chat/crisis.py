"""Crisis resources: what the author of a crisis-flagged message is shown.  Pure: no I/O.

A deployment configures its lines in ``AFTERTALK_CRISIS_LINES`` as a JSON list of
``{"name", "phone"?, "url"?, "text"?}`` (at least one of the three besides the name).
Without it the author is shown one generic entry telling them to call their local
emergency services: a wrong national number is worse than none, so the default
names no country's line.  The list is parsed once at start-up; a malformed value
stops the gateway with a message saying what is wrong, rather than leaving a
person in crisis with nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
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


def parse_crisis_lines(raw: str | None) -> tuple[CrisisLine, ...]:
    """The configured lines, or :data:`DEFAULT_LINES` when ``raw`` is empty.  Raises ValueError."""
    if raw is None or not raw.strip():
        return DEFAULT_LINES
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"crisis lines: not JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(doc, list) or not doc:
        raise ValueError("crisis lines: expected a non-empty JSON list of {\"name\", \"phone\"?, \"url\"?, \"text\"?}")
    if len(doc) > MAX_LINES:
        raise ValueError(f"crisis lines: at most {MAX_LINES} entries")
    return tuple(_line(i, entry) for i, entry in enumerate(doc))


def _line(i: int, entry: Any) -> CrisisLine:
    if not isinstance(entry, dict):
        raise ValueError(f"crisis lines[{i}]: expected an object")
    unknown = set(entry) - {"name", "phone", "url", "text"}
    if unknown:
        raise ValueError(f"crisis lines[{i}]: unknown field(s) {', '.join(sorted(unknown))}")
    values: dict[str, str] = {}
    for field in ("name", "phone", "url", "text"):
        value = entry.get(field)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_FIELD:
            raise ValueError(f"crisis lines[{i}].{field}: expected a non-empty string of at most "
                             f"{MAX_FIELD} characters")
        values[field] = value.strip()
    if "name" not in values:
        raise ValueError(f"crisis lines[{i}]: 'name' is required")
    if len(values) == 1:
        raise ValueError(f"crisis lines[{i}]: give at least one of 'phone', 'url' or 'text'")
    if "url" in values and not values["url"].lower().startswith(("https://", "http://")):
        raise ValueError(f"crisis lines[{i}].url: must start with https:// or http://")
    return CrisisLine(**values)


def resources_frame(conversation_id: str, lines: tuple[CrisisLine, ...]) -> dict[str, Any]:
    """The ``resources`` frame sent to the author of a crisis-flagged message."""
    return {"type": "resources", "conversation_id": conversation_id, "message": MESSAGE,
            "lines": [line.as_json() for line in lines]}
