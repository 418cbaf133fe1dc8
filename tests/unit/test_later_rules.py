"""The talk-later, talk-again and honest-wait rules of matcher/profile.py (pure)."""
from __future__ import annotations

from dataclasses import replace

from matcher.profile import (
    LATER_CARDS,
    Candidate,
    LaterRequest,
    Profile,
    Request,
    eligible,
    fitting_counts,
    in_reach,
    later_cards_for,
    later_eligible,
    may_accept_card,
    offers_for,
)

NOW = 1_800_000_000.0
CAP = 20


def prof(dx=("breast",), se=("fatigue",), lang=("en",)) -> Profile:
    return Profile(frozenset(dx), frozenset(se), frozenset(lang))


def sv(sid: str = "s1", **kw) -> Candidate:
    return Candidate(id=sid, profile=kw.pop("profile", prof()), **kw)


def later(pid: str = "p1", **kw) -> LaterRequest:
    return LaterRequest(patient_id=pid, profile=kw.pop("profile", prof()), created=kw.pop("created", NOW - 60), **kw)


def test_a_card_goes_to_a_fitting_survivor_open_to_offers():
    assert later_eligible(later(), sv(), now=NOW, daily_cap=CAP)
    assert not later_eligible(later(), sv(available=False), now=NOW, daily_cap=CAP)
    assert not later_eligible(later(), sv(online=False), now=NOW, daily_cap=CAP)
    assert not later_eligible(later(), sv(active=1), now=NOW, daily_cap=CAP)          # no free slot
    assert not later_eligible(later(), sv(profile=prof(lang=("fi",))), now=NOW, daily_cap=CAP)
    assert later_eligible(later(), sv(profile=prof(dx=("lung",))), now=NOW, daily_cap=CAP)   # side effect is enough


def test_a_live_talk_now_request_comes_first_and_suspension_stops_it():
    assert not later_eligible(later(live_request=True), sv(), now=NOW, daily_cap=CAP)
    assert not later_eligible(later(suspended=True), sv(), now=NOW, daily_cap=CAP)


def test_declined_blocked_current_and_already_shown_survivors_are_not_shown_it():
    for field in ("declined", "blocked", "current_peers", "offered_to"):
        assert not later_eligible(later(**{field: frozenset({"s1"})}), sv(), now=NOW, daily_cap=CAP)


def test_an_addressed_request_goes_to_its_survivor_only_whatever_the_topics():
    lr = later(target="s2", profile=prof(dx=(), se=(), lang=("en",)))
    assert later_eligible(lr, sv("s2", profile=prof(dx=("lung",), se=())), now=NOW, daily_cap=CAP)
    assert not later_eligible(lr, sv("s1"), now=NOW, daily_cap=CAP)


def test_cards_oldest_first_and_at_most_ten_held():
    reqs = [later(f"p{i}", created=NOW - i) for i in range(15)]
    shown = later_cards_for(sv(), reqs, held=0, now=NOW, daily_cap=CAP)
    assert [r.patient_id for r in shown] == [f"p{i}" for i in range(14, 14 - LATER_CARDS, -1)]
    assert len(later_cards_for(sv(), reqs, held=7, now=NOW, daily_cap=CAP)) == 3


def test_accepting_a_card_needs_a_free_slot_at_that_moment():
    lr = later(offered_to=frozenset({"s1"}))
    assert may_accept_card(sv(), lr, now=NOW, daily_cap=CAP)
    assert not may_accept_card(sv(pending=1), lr, now=NOW, daily_cap=CAP)       # a live offer holds the slot
    assert not may_accept_card(sv(active=1), lr, now=NOW, daily_cap=CAP)
    assert not may_accept_card(sv(), replace(lr, live_request=True), now=NOW, daily_cap=CAP)


def test_talk_again_requests_are_offered_to_their_survivor_only_and_first():
    req = Request("p1", prof(), target="s2")
    assert eligible(req, sv("s2", profile=prof(dx=("lung",), se=())), now=NOW, daily_cap=CAP)
    assert not eligible(req, sv("s1"), now=NOW, daily_cap=CAP)
    assert not in_reach(req, sv("s2"))                 # not in the request index: served on its own, first
    plain = Request("p0", prof())
    order = offers_for(sv("s2", max_chats=2), [plain, req], now=NOW, daily_cap=CAP)
    assert [r.patient_id for r in order] == ["p1", "p0"]


def test_fitting_counts_split_open_and_busy_and_leave_out_who_cannot_be_offered():
    req = Request("p1", prof(), blocked=frozenset({"s4"}))
    cands = [sv("s1"), sv("s2", active=1), sv("s3", available=False), sv("s4"),
             sv("s5", profile=prof(lang=("fi",))), sv("s6", online=False, active=1), sv("s7", pending=1)]
    assert fitting_counts(req, cands, now=NOW, daily_cap=CAP) == (1, 2)
    assert fitting_counts(Request("p1", prof(lang=("fi",))), cands[:2], now=NOW, daily_cap=CAP) == (0, 0)
    holding = Request("p1", prof(), strict_until=NOW + 60)
    assert fitting_counts(holding, [sv("s1", profile=prof(dx=("lung",)))], now=NOW, daily_cap=CAP) == (0, 0)
    assert fitting_counts(Request("p1", prof(), target="s2"), cands, now=NOW, daily_cap=CAP) == (0, 1)
