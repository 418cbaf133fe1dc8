"""Groups ("circles"): the pure rules.  No I/O, no awaits.

What a valid group is (:func:`parse_group_spec`), when its next session starts
(:func:`next_session`), which groups fit a person (:func:`fits`) and in what order they are
offered (:func:`order_key`).  ``list_groups`` and ``find_group`` (gateway/groups.py) apply
these to summaries read from Redis; the capacity and the waitlist are decided atomically in
Redis (chat/lua/group_join.lua), never here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.errors import ErrorCode, ServiceError
from matcher.profile import CodeLists, Profile

KINDS = ("diagnosis", "side_effect")
MIN_CAPACITY, MAX_CAPACITY, DEFAULT_CAPACITY = 3, 30, 8
MAX_TITLE, MAX_DESCRIPTION, MAX_PIN = 80, 500, 1000
MIN_DURATION, MAX_DURATION = 15, 240
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A weekly session: ISO weekday (1 = Monday ... 7 = Sunday), local start time, IANA zone."""

    weekday: int
    hour: int
    minute: int
    tz: str
    duration_min: int

    def as_json(self) -> dict[str, Any]:
        return {"weekday": self.weekday, "time": f"{self.hour:02d}:{self.minute:02d}", "tz": self.tz,
                "duration_min": self.duration_min}


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A ``create_group`` frame, checked."""

    kind: str
    code: str
    language: str
    title: str
    description: str
    capacity: int
    schedule: Schedule | None


def _bad(message: str, name: str) -> ServiceError:
    return ServiceError(ErrorCode.BAD_FRAME, message, field=name)


def _text(frame: dict[str, Any], name: str, limit: int, *, required: bool) -> str:
    value = frame.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        raise _bad(f"'{name}' must be {'1' if required else '0'} to {limit} characters.", name)
    return value.strip()


def parse_schedule(raw: Any) -> Schedule | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("'schedule' must be an object.", "schedule")
    weekday, at, tz, duration = raw.get("weekday"), raw.get("time"), raw.get("tz"), raw.get("duration_min", 60)
    if not isinstance(weekday, int) or isinstance(weekday, bool) or not 1 <= weekday <= 7:
        raise _bad("'schedule.weekday' must be 1 (Monday) to 7 (Sunday).", "schedule")
    match = _TIME.match(at) if isinstance(at, str) else None
    if match is None:
        raise _bad("'schedule.time' must be HH:MM.", "schedule")
    if not isinstance(tz, str) or not tz or len(tz) > 64:
        raise _bad("'schedule.tz' must be an IANA time zone such as Europe/Paris.", "schedule")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise _bad("'schedule.tz' is not a known time zone.", "schedule") from None
    if not isinstance(duration, int) or isinstance(duration, bool) or not MIN_DURATION <= duration <= MAX_DURATION:
        raise _bad(f"'schedule.duration_min' must be {MIN_DURATION} to {MAX_DURATION}.", "schedule")
    return Schedule(weekday, int(match.group(1)), int(match.group(2)), tz, duration)


def parse_group_spec(frame: dict[str, Any], vocabulary: CodeLists) -> GroupSpec:
    """Validate a ``create_group`` frame: topic and language from the vocabulary (``invalid_profile``),
    the rest ``bad_frame``."""
    topic = frame.get("topic")
    if not isinstance(topic, dict) or topic.get("kind") not in KINDS or not isinstance(topic.get("code"), str):
        raise ServiceError(ErrorCode.INVALID_PROFILE, "'topic' must be {kind: diagnosis|side_effect, code}.",
                           field="topic")
    kind, code = topic["kind"], topic["code"]
    known = vocabulary.diagnoses if kind == "diagnosis" else vocabulary.side_effects
    if code not in known:
        raise ServiceError(ErrorCode.INVALID_PROFILE, f"Unknown {kind} code.", field="topic")
    language = frame.get("language")
    if not isinstance(language, str) or language not in vocabulary.languages:
        raise ServiceError(ErrorCode.INVALID_PROFILE, "Unknown language code.", field="language")
    capacity = frame.get("capacity", DEFAULT_CAPACITY)
    if capacity is None:
        capacity = DEFAULT_CAPACITY
    if not isinstance(capacity, int) or isinstance(capacity, bool) or not MIN_CAPACITY <= capacity <= MAX_CAPACITY:
        raise _bad(f"'capacity' must be {MIN_CAPACITY} to {MAX_CAPACITY}.", "capacity")
    return GroupSpec(kind=kind, code=code, language=language,
                     title=_text(frame, "title", MAX_TITLE, required=True),
                     description=_text(frame, "description", MAX_DESCRIPTION, required=False),
                     capacity=capacity, schedule=parse_schedule(frame.get("schedule")))


def next_session(schedule: Schedule | None, now: datetime) -> datetime | None:
    """The start of the next session that has not ended at ``now`` (an aware datetime), in the
    schedule's zone; a session in progress is still the next one.  Local wall-clock time is kept
    across daylight-saving changes."""
    if schedule is None:
        return None
    zone = ZoneInfo(schedule.tz)
    local = now.astimezone(zone)
    day = local.date() + timedelta(days=(schedule.weekday - local.isoweekday()) % 7 - 7)
    for _ in range(3):          # last week's, this week's, next week's: the first not yet over
        start = datetime(day.year, day.month, day.day, schedule.hour, schedule.minute, tzinfo=zone)
        if start + timedelta(minutes=schedule.duration_min) > now:
            return start
        day += timedelta(days=7)
    raise AssertionError("unreachable: a weekly session ends within three weeks")


def iso(at: datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") if at is not None else None


@dataclass(frozen=True, slots=True)
class GroupView:
    """What the rules read of a group: its topic, language, fill and next session."""

    group_id: str
    kind: str
    code: str
    language: str
    members: int
    capacity: int
    next_session: datetime | None
    created: int = 0
    open: bool = True

    @property
    def has_room(self) -> bool:
        return self.members < self.capacity


def fits(profile: Profile, group: GroupView) -> bool:
    """The same topic (one of the person's diagnoses or side effects) and a language they speak."""
    if group.language not in profile.languages:
        return False
    codes = profile.diagnoses if group.kind == "diagnosis" else profile.side_effects
    return group.code in codes


_FAR = datetime.max.replace(tzinfo=UTC)


def order_key(group: GroupView) -> tuple[int, int, datetime, int, str]:
    """Diagnosis groups first, then groups with room, then the soonest session (unscheduled last),
    then the oldest group."""
    return (KINDS.index(group.kind), 0 if group.has_room else 1, group.next_session or _FAR, group.created,
            group.group_id)


def ranked(profile: Profile, groups: list[GroupView]) -> list[GroupView]:
    """The open groups that fit ``profile``, best first."""
    return sorted((g for g in groups if g.open and fits(profile, g)), key=order_key)


def competes(a: Profile, b: Profile) -> bool:
    """Two people waiting for a group would want the same one: a shared topic and language."""
    return bool(a.languages & b.languages) and bool(a.diagnoses & b.diagnoses or a.side_effects & b.side_effects)


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name 2``, ``name 3``... : the first one nobody in the group has."""
    if name not in taken:
        return name
    n = 2
    while f"{name} {n}" in taken:
        n += 1
    return f"{name} {n}"
