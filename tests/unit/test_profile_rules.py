"""The pure matching rules of matcher/profile.py: profile validation, eligibility, ranking.

The Lua scripts implement the same rules: tests/integration/test_matching_rules_equal.py feeds
both generated states and checks they decide alike, and tests/integration/test_matching.py checks
that real gateways agree with what is asserted here.
"""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ErrorCode, ServiceError
from matcher.profile import (
    DAY_S,
    MAX_CODES,
    QUEUE_SCAN,
    Candidate,
    Profile,
    Request,
    after_offer,
    best_survivor,
    conversations_today,
    eligible,
    next_patient,
    offers_for,
    parse_profile,
    rank_key,
    shared,
    suspended_at,
)
from matcher.vocabulary import load_vocabulary

VOCAB = load_vocabulary()
NOW = 1_000_000.0
CAP = 20


def prof(dx=(), se=(), lang=("en",)) -> Profile:
    return Profile(frozenset(dx), frozenset(se), frozenset(lang))


def cand(cid="s1", dx=("breast",), se=("fatigue",), lang=("en",), **kw) -> Candidate:
    return Candidate(id=cid, profile=prof(dx, se, lang), **kw)


def req(dx=("breast",), se=("fatigue",), lang=("en",), pid="p1", **kw) -> Request:
    return Request(patient_id=pid, profile=prof(dx, se, lang), **kw)


def ok(r: Request, c: Candidate, now: float = NOW, cap: int = CAP) -> bool:
    return eligible(r, c, now=now, daily_cap=cap)


def invalid(raw) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        parse_profile(raw, VOCAB)
    assert info.value.code == ErrorCode.INVALID_PROFILE
    assert info.value.message
    return info.value


# ---------------------------------------------------------------- parse_profile

def test_parse_profile_accepts_a_valid_profile_and_normalises_to_sets():
    p = parse_profile({"diagnoses": ["breast", "breast"], "side_effects": ["fatigue", "neuropathy"],
                       "languages": ["en", "fr"]}, VOCAB)
    assert p == prof(["breast"], ["fatigue", "neuropathy"], ["en", "fr"])
    assert p.as_json() == {"diagnoses": ["breast"], "side_effects": ["fatigue", "neuropathy"],
                           "languages": ["en", "fr"]}


@pytest.mark.parametrize("raw", [
    {"diagnoses": ["breast"], "languages": ["en"]},                                   # no side effects field
    {"side_effects": ["fatigue"], "languages": ["en"]},                               # no diagnoses field
    {"diagnoses": None, "side_effects": ["fatigue"], "languages": ["en"]},            # null counts as none
    {"diagnoses": [], "side_effects": ["lymphedema"], "languages": ["de"], "extra": 1},  # unknown fields ignored
])
def test_parse_profile_accepts_diagnosis_or_side_effect_alone(raw):
    p = parse_profile(raw, VOCAB)
    assert p.languages


@pytest.mark.parametrize("raw", [None, [], "breast", 3, True])
def test_profile_must_be_an_object(raw):
    invalid(raw)


@pytest.mark.parametrize("field,value", [
    ("diagnoses", ["not_a_cancer"]),
    ("diagnoses", ["breast", "Breast"]),          # codes are case-sensitive
    ("side_effects", ["fatigue", "teleportation"]),
    ("side_effects", ["breast"]),                 # a diagnosis code is not a side effect
    ("languages", ["english"]),
    ("languages", ["xx"]),
])
def test_unknown_codes_are_refused_naming_the_field(field, value):
    raw = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"], field: value}
    err = invalid(raw)
    assert err.data.get("field") == field


def test_unknown_code_message_is_bounded_even_for_huge_codes():
    err = invalid({"diagnoses": ["x" * 10_000], "languages": ["en"]})
    assert len(err.message) < 300


@pytest.mark.parametrize("field,value", [
    ("diagnoses", "breast"),                      # a string, not a list
    ("diagnoses", {"breast": True}),
    ("side_effects", [1, 2]),
    ("side_effects", [["fatigue"]]),
    ("languages", [None]),
    ("languages", "en"),
    ("diagnoses", list(VOCAB.diagnoses)[:MAX_CODES + 1]),   # too many codes
])
def test_wrong_types_and_oversized_lists_are_refused(field, value):
    raw = {"diagnoses": ["breast"], "side_effects": ["fatigue"], "languages": ["en"], field: value}
    err = invalid(raw)
    assert err.data.get("field") == field


def test_max_codes_exactly_is_accepted():
    p = parse_profile({"side_effects": list(VOCAB.side_effects)[:MAX_CODES], "languages": ["en"]}, VOCAB)
    assert len(p.side_effects) == MAX_CODES


@pytest.mark.parametrize("raw", [
    {"languages": ["en"]},
    {"diagnoses": [], "side_effects": [], "languages": ["en"]},
    {"diagnoses": None, "side_effects": None, "languages": ["en"]},
])
def test_no_topic_is_refused(raw):
    assert "diagnosis or side effect" in invalid(raw).message


@pytest.mark.parametrize("raw", [
    {"diagnoses": ["breast"]},
    {"diagnoses": ["breast"], "languages": []},
    {"side_effects": ["fatigue"], "languages": None},
])
def test_no_language_is_refused(raw):
    assert "language" in invalid(raw).message


def test_every_vocabulary_code_is_accepted_in_its_own_section():
    p = parse_profile({"diagnoses": ["breast"], "languages": ["en"]}, VOCAB)
    assert p
    for code in VOCAB.diagnoses:
        parse_profile({"diagnoses": [code], "languages": ["en"]}, VOCAB)
    for code in VOCAB.side_effects:
        parse_profile({"side_effects": [code], "languages": ["en"]}, VOCAB)
    for code in VOCAB.languages:
        parse_profile({"diagnoses": ["breast"], "languages": [code]}, VOCAB)


# ---------------------------------------------------------------- eligible(): one rule at a time

def test_baseline_pair_is_eligible():
    assert ok(req(), cand())


def test_shared_topic_is_required():
    assert not ok(req(dx=["lung"], se=["nausea"]), cand(dx=["breast"], se=["fatigue"]))
    assert ok(req(dx=["lung"], se=["fatigue"]), cand(dx=["breast"], se=["fatigue"]))   # side effect alone
    assert ok(req(dx=["breast"], se=[]), cand(dx=["breast"], se=["fatigue"]))          # diagnosis alone


def test_shared_language_is_required():
    assert not ok(req(lang=["fr"]), cand(lang=["en", "de"]))
    assert ok(req(lang=["fr", "de"]), cand(lang=["en", "de"]))


def test_survivor_must_be_available_and_online():
    assert not ok(req(), cand(available=False))
    assert not ok(req(), cand(online=False))


@pytest.mark.parametrize("max_chats,active,pending,expected", [
    (1, 0, 0, True), (1, 1, 0, False), (1, 0, 1, False),
    (2, 1, 0, True), (2, 0, 1, True), (2, 1, 1, False), (2, 0, 2, False), (2, 2, 0, False),
    (3, 1, 1, True), (3, 3, 0, False),
])
def test_capacity_counts_active_conversations_and_pending_offers(max_chats, active, pending, expected):
    assert ok(req(), cand(max_chats=max_chats, active=active, pending=pending)) is expected


def test_cooldown_blocks_until_it_has_passed():
    assert not ok(req(), cand(cooldown_until=NOW + 0.001))
    assert ok(req(), cand(cooldown_until=NOW))
    assert ok(req(), cand(cooldown_until=NOW - 10))


def test_daily_cap():
    assert ok(req(), cand(today=CAP - 1))
    assert not ok(req(), cand(today=CAP))
    assert not ok(req(), cand(today=3), cap=3)
    assert not ok(req(), cand(today=0), cap=0)


def test_suspension_of_either_side():
    assert not ok(req(suspended=True), cand())
    assert not ok(req(), cand(suspended=True))


def test_blocks_current_peers_and_decliners_are_excluded_only_for_themselves():
    for field in ("blocked", "current_peers", "declined"):
        r = req(**{field: frozenset({"s1"})})
        assert not ok(r, cand("s1")), field
        assert ok(r, cand("s2")), field


def test_a_user_is_never_matched_with_themselves():
    assert not ok(req(pid="same"), cand("same"))


def test_strict_window_admits_same_diagnosis_only_until_it_ends():
    strict = req(dx=["breast"], se=["fatigue"], strict_until=NOW + 30)
    side_effect_peer = cand(dx=["lung"], se=["fatigue"])
    same_dx_peer = cand(dx=["breast"], se=[])
    assert not ok(strict, side_effect_peer)
    assert ok(strict, same_dx_peer)
    assert ok(strict, side_effect_peer, now=NOW + 30)        # window over: side-effect peers too
    assert ok(strict, same_dx_peer, now=NOW + 30)
    # still no match without a shared language, even for the same diagnosis
    assert not ok(strict, cand(dx=["breast"], lang=["fr"]))


def test_the_daily_count_restarts_each_utc_day():
    today = int(NOW // DAY_S)
    assert conversations_today(today, 5, NOW) == 5
    assert conversations_today(today - 1, 5, NOW) == 0          # yesterday's counter
    assert conversations_today(None, 0, NOW) == 0               # never matched
    assert conversations_today(today, 3, (today + 1) * DAY_S) == 0
    assert not ok(req(), cand(today=conversations_today(None, 0, NOW)), cap=0)   # a cap of 0 admits nobody


def test_a_suspension_holds_until_its_end_or_until_lifted():
    assert suspended_at(0, NOW) and suspended_at(NOW + 1, NOW)
    assert not suspended_at(None, NOW) and not suspended_at(NOW, NOW) and not suspended_at(NOW - 1, NOW)


def test_a_request_with_an_offer_out_or_whose_owner_is_away_is_offered_nobody():
    assert not ok(req(offered=True), cand())
    assert not ok(req(away=True), cand())
    assert best_survivor(req(away=True), [cand()], now=NOW, daily_cap=CAP) is None


# ---------------------------------------------------------------- ranking

def test_shared_diagnosis_beats_any_number_of_side_effects():
    all_se = list(VOCAB.side_effects)[:MAX_CODES]
    r = req(dx=["breast"], se=all_se)
    dx_only = cand("dx", dx=["breast"], se=[], last_match=NOW)        # matched just now
    many_se = cand("se", dx=["lung"], se=all_se, last_match=0.0)       # waited forever
    assert rank_key(r, dx_only) > rank_key(r, many_se)
    assert best_survivor(r, [many_se, dx_only], now=NOW, daily_cap=CAP).id == "dx"


def test_more_shared_side_effects_wins_among_same_diagnosis():
    r = req(dx=["breast"], se=["fatigue", "neuropathy", "insomnia"])
    one = cand("one", dx=["breast"], se=["fatigue"], last_match=0.0)
    two = cand("two", dx=["breast"], se=["fatigue", "neuropathy"], last_match=NOW)
    assert best_survivor(r, [one, two], now=NOW, daily_cap=CAP).id == "two"


def test_equal_overlap_goes_to_who_waited_longest_since_last_match():
    r = req()
    fresh = cand("fresh", last_match=NOW - 5)
    rested = cand("rested", last_match=NOW - 500)
    middle = cand("middle", last_match=NOW - 50)
    assert best_survivor(r, [fresh, middle, rested], now=NOW, daily_cap=CAP).id == "rested"


def test_best_survivor_skips_ineligible_even_if_better_ranked():
    r = req(dx=["breast"], se=["fatigue"])
    best_but_busy = cand("busy", active=1)
    worse_but_free = cand("free", dx=["lung"], se=["fatigue"])
    assert best_survivor(r, [best_but_busy, worse_but_free], now=NOW, daily_cap=CAP).id == "free"
    assert best_survivor(r, [best_but_busy], now=NOW, daily_cap=CAP) is None
    assert best_survivor(r, [], now=NOW, daily_cap=CAP) is None


def test_more_shared_diagnoses_rank_higher():
    r = req(dx=["breast", "ovarian"], se=[])
    one = cand("one", dx=["breast"], se=[])
    two = cand("two", dx=["breast", "ovarian"], se=[], last_match=NOW)
    assert best_survivor(r, [one, two], now=NOW, daily_cap=CAP).id == "two"


def test_shared_lists_what_both_have():
    assert shared(prof(["breast", "lung"], ["fatigue", "pain"]), prof(["lung"], ["pain", "nausea"])) == {
        "diagnoses": ["lung"], "side_effects": ["pain"]}
    assert shared(prof(["breast"]), prof(["lung"])) == {"diagnoses": [], "side_effects": []}


def test_next_patient_is_the_oldest_waiting_one_the_survivor_suits():
    s = cand("s", dx=["breast"], se=["fatigue"], lang=["en"])
    waiting = [
        req(pid="oldest-other-language", lang=["fr"]),
        req(pid="old-blocked", blocked=frozenset({"s"})),
        req(pid="old-eligible"),
        req(pid="young-eligible"),
    ]
    assert next_patient(s, waiting, now=NOW, daily_cap=CAP).patient_id == "old-eligible"
    assert next_patient(s, waiting[:2], now=NOW, daily_cap=CAP) is None
    assert next_patient(dataclasses.replace(s, active=1), waiting, now=NOW, daily_cap=CAP) is None


def test_next_patient_respects_strict_window():
    side_effect_survivor = cand("s", dx=["lung"], se=["fatigue"])
    waiting = [req(pid="holding-out", strict_until=NOW + 10), req(pid="open")]
    assert next_patient(side_effect_survivor, waiting, now=NOW, daily_cap=CAP).patient_id == "open"
    assert next_patient(side_effect_survivor, waiting, now=NOW + 10, daily_cap=CAP).patient_id == "holding-out"


def test_a_survivor_who_frees_up_is_offered_while_slots_last():
    s = cand("s", max_chats=2, active=0)
    waiting = [req(pid=f"p{i}") for i in range(4)]
    assert [r.patient_id for r in offers_for(s, waiting, now=NOW, daily_cap=CAP)] == ["p0", "p1"]
    assert after_offer(s, now=NOW) == dataclasses.replace(s, pending=1)
    auto = dataclasses.replace(s, auto_accept=True, max_chats=3)
    assert after_offer(auto, now=NOW) == dataclasses.replace(auto, active=1, today=1, last_match=NOW)
    assert [r.patient_id for r in offers_for(auto, waiting, now=NOW, daily_cap=2)] == ["p0", "p1"]   # daily cap
    assert offers_for(dataclasses.replace(s, online=False), waiting, now=NOW, daily_cap=CAP) == []


def test_a_survivor_who_frees_up_looks_at_the_oldest_queue_scan_requests_in_reach_only():
    s = cand("s")
    # in reach (a shared topic and language) but not eligible: this patient declined them before
    waiting = [req(pid=f"p{i}", declined=frozenset({"s"})) for i in range(QUEUE_SCAN)] + [req(pid="late")]
    assert next_patient(s, waiting, now=NOW, daily_cap=CAP) is None
    assert offers_for(s, waiting, now=NOW, daily_cap=CAP) == []
    assert next_patient(s, waiting[1:], now=NOW, daily_cap=CAP).patient_id == "late"
    # out of reach (another language, another topic, offered, away) never count towards the scan
    far = ([req(pid=f"f{i}", lang=["fr"]) for i in range(QUEUE_SCAN)]
           + [req(pid=f"t{i}", dx=("lung",), se=("nausea",)) for i in range(QUEUE_SCAN)]
           + [req(pid=f"o{i}", offered=True) for i in range(QUEUE_SCAN)]
           + [req(pid=f"a{i}", away=True) for i in range(QUEUE_SCAN)])
    assert next_patient(s, [*far, req(pid="late")], now=NOW, daily_cap=CAP).patient_id == "late"
    assert [r.patient_id for r in offers_for(s, [*far, req(pid="late")], now=NOW, daily_cap=CAP)] == ["late"]


# ---------------------------------------------------------------- properties

DX = sorted(VOCAB.diagnoses)[:5]
SE = sorted(VOCAB.side_effects)[:5]
LANG = ["en", "fr", "es"]
codes = lambda pool: st.frozensets(st.sampled_from(pool), max_size=3)
profiles = st.builds(Profile, codes(DX), codes(SE), st.frozensets(st.sampled_from(LANG), min_size=1, max_size=2))
candidates = st.builds(
    Candidate, id=st.sampled_from([f"s{i}" for i in range(8)]), profile=profiles,
    available=st.booleans(), online=st.booleans(), max_chats=st.integers(1, 3), active=st.integers(0, 3),
    pending=st.integers(0, 2), last_match=st.floats(0, NOW, allow_nan=False),
    cooldown_until=st.sampled_from([0.0, NOW + 5]), today=st.integers(0, CAP + 1), suspended=st.booleans())
requests = st.builds(
    Request, patient_id=st.just("p"), profile=profiles, strict_until=st.sampled_from([0.0, NOW + 5]),
    blocked=st.frozensets(st.sampled_from([f"s{i}" for i in range(8)]), max_size=2),
    current_peers=st.frozensets(st.sampled_from([f"s{i}" for i in range(8)]), max_size=2),
    declined=st.frozensets(st.sampled_from([f"s{i}" for i in range(8)]), max_size=2),
    suspended=st.booleans())


def _spec_eligible(r: Request, c: Candidate) -> bool:
    """The issue's rules, written out independently of matcher.profile."""
    sdx, sse = r.profile.diagnoses & c.profile.diagnoses, r.profile.side_effects & c.profile.side_effects
    topic = bool(sdx) if r.strict_until > NOW else bool(sdx or sse)
    return (topic and bool(r.profile.languages & c.profile.languages)
            and c.available and c.online and not c.suspended and not r.suspended
            and c.active + c.pending < c.max_chats and c.cooldown_until <= NOW and c.today < CAP
            and c.id not in r.blocked | r.current_peers | r.declined and c.id != r.patient_id)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, candidates)
def test_eligible_matches_the_written_rules(r, c):
    assert ok(r, c) == _spec_eligible(r, c)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, st.lists(candidates, max_size=8, unique_by=lambda c: c.id))
def test_best_survivor_is_eligible_and_unbeaten(r, pool):
    best = best_survivor(r, pool, now=NOW, daily_cap=CAP)
    survivors = [c for c in pool if _spec_eligible(r, c)]
    if not survivors:
        assert best is None
        return
    assert best is not None and _spec_eligible(r, best)

    def spec_key(c):
        return (len(r.profile.diagnoses & c.profile.diagnoses),
                len(r.profile.side_effects & c.profile.side_effects), -c.last_match)
    assert spec_key(best) == max(spec_key(c) for c in survivors)
    if any(r.profile.diagnoses & c.profile.diagnoses for c in survivors):
        assert r.profile.diagnoses & best.profile.diagnoses


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(candidates, st.lists(requests, max_size=6))
def test_next_patient_is_first_eligible_in_queue_order(c, waiting):
    waiting = [dataclasses.replace(r, patient_id=f"p{i}") for i, r in enumerate(waiting)]
    chosen = next_patient(c, waiting, now=NOW, daily_cap=CAP)
    expected = [r for r in waiting if _spec_eligible(r, c)]
    assert chosen == (expected[0] if expected else None)
