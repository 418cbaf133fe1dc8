"""Profiles and the matching rules: the specification, as plain data and pure functions.

Production runs these rules as Lua (``matcher/lua/lib.lua``), for atomicity and speed; this
module says the same in plain Python, with no I/O.  tests/integration/test_matching_rules_equal.py
feeds generated states to both and checks that they pick the same survivor (and, when a survivor
frees up, the same patients).  A difference is a bug in one of the two: keep them equal.

**Eligibility** (:func:`eligible`): a survivor may be offered to a patient's request right now iff

* the survivor is open to offers (:func:`survivor_open`, lib.lua ``indexable``): available, online
  (at least one live connection), not suspended, with a free slot (conversations plus pending
  offers below ``max_chats``), not cooling down after a conversation, and fewer than ``daily_cap``
  conversations begun on this UTC day;
* the request is open (:func:`request_open`, lib.lua ``try_match``): the patient is not suspended,
  has no offer out, and is not away (lost every connection, inside the grace period);
* the pair is allowed (:func:`pair_allowed`, lib.lua ``pair_ok``): not the same user, no block
  either way, not talking with each other now, and the survivor has not declined or let lapse an
  offer of this request (an offer withdrawn because their connection died does not count);
* their profiles fit (:func:`profiles_fit`): a shared language, and a shared diagnosis or, unless
  the request is still holding out for the same diagnosis (``prefer_same_diagnosis_s``), a shared
  side effect.

**Ranking** (:func:`rank_key`, lib.lua ``best_survivor``): most shared diagnoses, then most shared
side effects, then the longest wait since the survivor's last match.  Times are the Redis server's
clock to the microsecond, so two survivors never share a time of last match in practice; for an
exact tie on all three the scripts take either.

**Who gets a survivor who frees up** (:func:`offers_for`, lib.lua ``serve_survivor``): of the
requests within the survivor's reach (:func:`in_reach`: open, sharing a language and a diagnosis or
side effect; lib.lua's request index), the oldest :data:`QUEUE_SCAN` are looked at, and the eligible
ones are offered, one after the other while the survivor stays open to offers (:func:`after_offer`).
Requests a patient addressed to one survivor (``talk_again``, :attr:`Request.target`) are offered to
that survivor only, and come first when they free up.

**Honest waits** (:func:`fitting_counts`, lib.lua ``fit_counts``): who fits a request now, split into
survivors open to offers and survivors available but busy; matcher/estimate.py turns that and the
measured rates into the ``queued`` estimate.  The property test checks these counts too, for every
generated request left waiting.

**Talk-later requests** (:class:`LaterRequest`; lib.lua ``later_pair_ok``, ``later_open``,
``serve_later``): offered as cards, which hold no slot, to survivors open to offers after every live
request they may be offered (:func:`later_eligible`); oldest first, at most :data:`LATER_CARDS` held
at once (:func:`later_cards_for`); accepting one needs the survivor open to offers at that moment
(:func:`may_accept_card`), so a card never books a survivor beyond ``max_chats``.
tests/unit/test_later_rules.py checks these rules; the Lua is checked against them through the protocol
(tests/integration/test_matching_later.py), not yet by the property test.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from core.errors import ErrorCode, ServiceError

MAX_CODES = 12
QUEUE_SCAN = 500          # a survivor who frees up looks at the oldest this many requests in reach
LATER_CARDS = 10          # talk-later cards one survivor holds at most (lib.lua LATER_CARDS)
DAY_S = 86400             # daily caps count conversations begun on one UTC day


class CodeLists(Protocol):
    """The controlled vocabulary (matcher.vocabulary.Vocabulary): code -> label per section."""

    @property
    def diagnoses(self) -> Mapping[str, str]: ...

    @property
    def side_effects(self) -> Mapping[str, str]: ...

    @property
    def languages(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Profile:
    diagnoses: frozenset[str]
    side_effects: frozenset[str]
    languages: frozenset[str]

    def as_json(self) -> dict[str, list[str]]:
        return {"diagnoses": sorted(self.diagnoses), "side_effects": sorted(self.side_effects),
                "languages": sorted(self.languages)}


def _codes(raw: Any, field: str, known: Mapping[str, str]) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw) or len(raw) > MAX_CODES:
        raise ServiceError(ErrorCode.INVALID_PROFILE, f"'{field}' must be a list of at most {MAX_CODES} codes.",
                           field=field)
    unknown = sorted({c for c in raw if c not in known})
    if unknown:
        raise ServiceError(ErrorCode.INVALID_PROFILE, f"Unknown {field} code(s): {', '.join(unknown[:5])[:200]}.",
                           field=field)
    return frozenset(raw)


def parse_profile(raw: Any, vocabulary: CodeLists) -> Profile:
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


# ---------------------------------------------------------------- the state the rules read

@dataclass(frozen=True, slots=True)
class Candidate:
    """A survivor as the matcher sees them at one instant."""

    id: str
    profile: Profile
    available: bool = True        # said so (and has not been switched off for two missed offers)
    online: bool = True           # at least one live connection
    max_chats: int = 1
    active: int = 0               # open conversations
    pending: int = 0              # offers out, not yet answered
    last_match: float = 0.0       # when their last conversation began (or they first said available)
    cooldown_until: float = 0.0   # no offers before this time (set when a conversation ends)
    today: int = 0                # conversations begun this UTC day: see conversations_today()
    suspended: bool = False       # by a moderator, now: see suspended_at()
    auto_accept: bool = False     # offers become conversations at once


@dataclass(frozen=True, slots=True)
class Request:
    """A patient's talk-now request at one instant."""

    patient_id: str
    profile: Profile
    strict_until: float = 0.0                     # until then, same-diagnosis peers only
    blocked: frozenset[str] = frozenset()         # survivors blocked either way
    current_peers: frozenset[str] = frozenset()   # survivors talking with this patient now
    declined: frozenset[str] = frozenset()        # survivors who declined or let lapse an offer of it
    suspended: bool = False                       # the patient, by a moderator (see suspended_at())
    offered: bool = False                         # an offer of this request is out, waiting for an answer
    away: bool = False                            # the patient lost every connection (inside the grace period)
    target: str | None = None                     # talk_again: offered to this survivor only


def day_of(now: float) -> int:
    """The UTC day number a time falls on (what daily caps count by)."""
    return int(now // DAY_S)


def conversations_today(day: int | None, count: int, now: float) -> int:
    """A survivor's conversations begun today, from the stored counter and the day it counts for."""
    return count if day == day_of(now) else 0


def suspended_at(until: float | None, now: float) -> bool:
    """Whether a suspension recorded as ``until`` (None: none; 0: until lifted) holds at ``now``."""
    return until is not None and (until == 0 or until > now)


# ---------------------------------------------------------------- eligibility

def survivor_open(cand: Candidate, *, now: float, daily_cap: int) -> bool:
    """Whether the survivor may be offered to anyone right now."""
    return (cand.available and cand.online and not cand.suspended
            and cand.active + cand.pending < cand.max_chats
            and cand.cooldown_until <= now and cand.today < daily_cap)


def request_open(req: Request) -> bool:
    """Whether the request may be offered anyone right now."""
    return not (req.suspended or req.offered or req.away)


def pair_allowed(req: Request, cand: Candidate) -> bool:
    """Whether these two may ever be matched, as far as this request knows."""
    sid = cand.id
    if req.target is not None and sid != req.target:
        return False
    return not (sid == req.patient_id or sid in req.blocked or sid in req.current_peers or sid in req.declined)


def profiles_fit(patient: Profile, survivor: Profile, *, same_diagnosis_only: bool = False) -> bool:
    """A shared language, and a shared diagnosis (or, unless ``same_diagnosis_only``, side effect)."""
    if not patient.languages & survivor.languages:
        return False
    if patient.diagnoses & survivor.diagnoses:
        return True
    return not same_diagnosis_only and bool(patient.side_effects & survivor.side_effects)


def eligible(req: Request, cand: Candidate, *, now: float, daily_cap: int) -> bool:
    """Whether this survivor may be offered to this patient right now (a talk_again request: its survivor,
    sharing a language, whatever the topics)."""
    if req.target is not None:
        return (survivor_open(cand, now=now, daily_cap=daily_cap) and request_open(req)
                and pair_allowed(req, cand) and bool(req.profile.languages & cand.profile.languages))
    return (survivor_open(cand, now=now, daily_cap=daily_cap) and request_open(req) and pair_allowed(req, cand)
            and profiles_fit(req.profile, cand.profile, same_diagnosis_only=now < req.strict_until))


# ---------------------------------------------------------------- ranking and choosing

def shared(patient: Profile, survivor: Profile) -> dict[str, list[str]]:
    return {"diagnoses": sorted(patient.diagnoses & survivor.diagnoses),
            "side_effects": sorted(patient.side_effects & survivor.side_effects)}


def rank_key(req: Request, cand: Candidate) -> tuple[int, int, float]:
    """Sort key, larger is better: shared diagnoses, then shared side effects, then longest wait."""
    p, s = req.profile, cand.profile
    return (len(p.diagnoses & s.diagnoses), len(p.side_effects & s.side_effects), -cand.last_match)


def best_survivor(req: Request, candidates: Iterable[Candidate], *, now: float, daily_cap: int) -> Candidate | None:
    """The survivor a request is offered to when it is made (or its hold ends, or an offer of it ends)."""
    pool = [c for c in candidates if eligible(req, c, now=now, daily_cap=daily_cap)]
    return max(pool, key=lambda c: rank_key(req, c), default=None)


def in_reach(req: Request, cand: Candidate) -> bool:
    """Whether a survivor who frees up looks at this request at all: it is open, and shares a language
    and a diagnosis or side effect with them (lib.lua ``ready_for``, over the request index)."""
    p, s = req.profile, cand.profile
    return req.target is None and request_open(req) and bool(p.languages & s.languages) and bool(
        p.diagnoses & s.diagnoses or p.side_effects & s.side_effects)


def next_patient(cand: Candidate, waiting: Iterable[Request], *, now: float, daily_cap: int) -> Request | None:
    """When a survivor frees up, the oldest queued request they may be offered to (``waiting``: the queue,
    oldest first; only the first QUEUE_SCAN in reach are looked at)."""
    reach = (req for req in waiting if in_reach(req, cand))
    for i, req in enumerate(reach):
        if i >= QUEUE_SCAN:
            return None
        if eligible(req, cand, now=now, daily_cap=daily_cap):
            return req
    return None


def after_offer(cand: Candidate, *, now: float) -> Candidate:
    """The survivor once offered to one more patient: a pending offer, or with auto-accept a conversation."""
    if cand.auto_accept:
        return replace(cand, active=cand.active + 1, today=cand.today + 1, last_match=now)
    return replace(cand, pending=cand.pending + 1)


def offers_for(cand: Candidate, queue: Sequence[Request], *, now: float, daily_cap: int) -> list[Request]:
    """The requests a survivor who frees up (comes online, says available, ends a conversation, sees an
    offer end, cools down) is offered to, in order: the eligible ones among the first QUEUE_SCAN requests
    in reach (oldest first), while the survivor stays open to offers."""
    out: list[Request] = []
    addressed = [r for r in queue if r.target == cand.id]
    for req in addressed + [r for r in queue if in_reach(r, cand)][:QUEUE_SCAN]:
        if not survivor_open(cand, now=now, daily_cap=daily_cap):
            break
        if eligible(req, cand, now=now, daily_cap=daily_cap):
            out.append(req)
            cand = after_offer(cand, now=now)
    return out


# ---------------------------------------------------------------- honest waits

def fitting_counts(req: Request, candidates: Iterable[Candidate], *, now: float, daily_cap: int) -> tuple[int, int]:
    """(open to offers now, available but busy): the survivors who fit the request as it stands.  Only
    survivors who said available, are online and not suspended count; the pair must be allowed; a
    talk_again request counts its survivor only."""
    free = busy = 0
    for cand in candidates:
        if not (cand.available and cand.online and not cand.suspended) or not pair_allowed(req, cand):
            continue
        if req.target is None and not profiles_fit(req.profile, cand.profile,
                                                   same_diagnosis_only=now < req.strict_until):
            continue
        if survivor_open(cand, now=now, daily_cap=daily_cap):
            free += 1
        else:
            busy += 1
    return free, busy


# ---------------------------------------------------------------- talk-later requests

@dataclass(frozen=True, slots=True)
class LaterRequest:
    """A patient's talk-later request at one instant (lives without a connection until it expires)."""

    patient_id: str
    profile: Profile
    created: float
    target: str | None = None                     # from talk_again: that survivor only
    blocked: frozenset[str] = frozenset()
    current_peers: frozenset[str] = frozenset()
    declined: frozenset[str] = frozenset()        # survivors who declined a card of it
    offered_to: frozenset[str] = frozenset()      # survivors holding a card of it now
    suspended: bool = False
    live_request: bool = False                    # the patient has a live talk-now request: that comes first


def later_open(lr: LaterRequest) -> bool:
    return not (lr.suspended or lr.live_request)


def later_eligible(lr: LaterRequest, cand: Candidate, *, now: float, daily_cap: int) -> bool:
    """Whether this survivor may be shown a card of this talk-later request now."""
    sid = cand.id
    if not (survivor_open(cand, now=now, daily_cap=daily_cap) and later_open(lr)):
        return False
    if sid == lr.patient_id or sid in lr.blocked or sid in lr.current_peers or sid in lr.declined:
        return False
    if sid in lr.offered_to:
        return False
    if lr.target is not None:
        return sid == lr.target
    p, s = lr.profile, cand.profile
    return bool(p.languages & s.languages) and bool(p.diagnoses & s.diagnoses or p.side_effects & s.side_effects)


def later_cards_for(cand: Candidate, requests: Iterable[LaterRequest], *, held: int, now: float,
                    daily_cap: int) -> list[LaterRequest]:
    """The talk-later requests a survivor with no live request left for them is shown, oldest first, while
    they hold fewer than LATER_CARDS cards (``held``: cards they hold already)."""
    out: list[LaterRequest] = []
    for lr in sorted(requests, key=lambda r: r.created):
        if held + len(out) >= LATER_CARDS:
            break
        if later_eligible(lr, cand, now=now, daily_cap=daily_cap):
            out.append(lr)
    return out


def may_accept_card(cand: Candidate, lr: LaterRequest, *, now: float, daily_cap: int) -> bool:
    """Accepting a card books a slot: the survivor must be open to offers at that moment (lib.lua refuses
    ``capacity`` otherwise), and the request still open and allowed for them (else ``not_found``)."""
    return later_eligible(replace(lr, offered_to=lr.offered_to - {cand.id}), cand, now=now, daily_cap=daily_cap)
