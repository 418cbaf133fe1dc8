"""Profiles and the matching rules, as plain data and pure functions.

The Redis scripts implement the same rules for speed and atomicity; the unit
tests check the pure rules exhaustively and the integration tests check that
the scripts agree with them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from core.errors import ErrorCode, ServiceError
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matcher.vocabulary import Vocabulary

MAX_CODES = 12


@dataclass(frozen=True, slots=True)
class Profile:
    diagnoses: frozenset[str]
    side_effects: frozenset[str]
    languages: frozenset[str]

    def as_json(self) -> dict[str, list[str]]:
        return {"diagnoses": sorted(self.diagnoses), "side_effects": sorted(self.side_effects),
                "languages": sorted(self.languages)}


def _codes(raw: Any, field: str, known: dict[str, str]) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw) or len(raw) > MAX_CODES:
        raise ServiceError(ErrorCode.INVALID_PROFILE, f"'{field}' must be a list of at most {MAX_CODES} codes.", field=field)
    unknown = sorted({c for c in raw if c not in known})
    if unknown:
        raise ServiceError(ErrorCode.INVALID_PROFILE, f"Unknown {field} code(s): {', '.join(unknown[:5])[:200]}.",
                           field=field)
    return frozenset(raw)


def parse_profile(raw: Any, vocabulary: "Vocabulary") -> Profile:
    """Validate a profile object from a frame against the controlled vocabulary."""
    if not isinstance(raw, dict):
        raise ServiceError(ErrorCode.INVALID_PROFILE, "'profile' must be an object.")
    profile = Profile(
        diagnoses=_codes(raw.get("diagnoses"), "diagnoses", vocabulary.diagnoses),
        side_effects=_codes(raw.get("side_effects"), "side_effects", vocabulary.side_effects),
        languages=_codes(raw.get("languages"), "languages", vocabulary.languages),
    )
    if not profile.diagnoses and not profile.side_effects:
        raise ServiceError(ErrorCode.INVALID_PROFILE, "Choose at least one diagnosis or side effect.")
    if not profile.languages:
        raise ServiceError(ErrorCode.INVALID_PROFILE, "Choose at least one language.")
    return profile


@dataclass(frozen=True, slots=True)
class Candidate:
    """A survivor as the matcher sees them at one instant."""

    id: str
    profile: Profile
    available: bool = True
    online: bool = True
    max_chats: int = 1
    active: int = 0
    pending: int = 0
    last_match: float = 0.0
    cooldown_until: float = 0.0
    today: int = 0
    suspended: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    """A patient's talk-now request at one instant."""

    patient_id: str
    profile: Profile
    strict_until: float = 0.0            # until then, same-diagnosis peers only
    blocked: frozenset[str] = frozenset()   # survivors blocked either way
    current_peers: frozenset[str] = frozenset()  # survivors already chatting with this patient
    declined: frozenset[str] = frozenset()  # survivors who declined or let this request's offer lapse
    suspended: bool = False


def shared(patient: Profile, survivor: Profile) -> dict[str, list[str]]:
    return {"diagnoses": sorted(patient.diagnoses & survivor.diagnoses),
            "side_effects": sorted(patient.side_effects & survivor.side_effects)}


def eligible(req: Request, cand: Candidate, *, now: float, daily_cap: int) -> bool:
    """Whether this survivor may be offered to this patient right now."""
    p, s = req.profile, cand.profile
    if req.suspended or cand.suspended or not cand.available or not cand.online:
        return False
    if cand.active + cand.pending >= cand.max_chats or cand.cooldown_until > now or cand.today >= daily_cap:
        return False
    if cand.id in req.blocked or cand.id in req.current_peers or cand.id in req.declined or cand.id == req.patient_id:
        return False
    if not (p.languages & s.languages):
        return False
    share_dx = bool(p.diagnoses & s.diagnoses)
    if now < req.strict_until:
        return share_dx
    return share_dx or bool(p.side_effects & s.side_effects)


def rank_key(req: Request, cand: Candidate) -> tuple[int, int, float]:
    """Sort key, larger is better: shared diagnoses, then shared side effects, then longest wait."""
    p, s = req.profile, cand.profile
    return (len(p.diagnoses & s.diagnoses), len(p.side_effects & s.side_effects), -cand.last_match)


def best_survivor(req: Request, candidates: Iterable[Candidate], *, now: float, daily_cap: int) -> Candidate | None:
    pool = [c for c in candidates if eligible(req, c, now=now, daily_cap=daily_cap)]
    return max(pool, key=lambda c: rank_key(req, c), default=None)


def next_patient(cand: Candidate, waiting: Iterable[Request], *, now: float, daily_cap: int) -> Request | None:
    """When a survivor frees up, the oldest waiting patient they are eligible for (``waiting`` is oldest first)."""
    return next((r for r in waiting if eligible(r, cand, now=now, daily_cap=daily_cap)), None)
