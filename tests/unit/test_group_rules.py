"""The pure rules of groups (matcher/groups.py): what a valid group is, its next session across time
zones and daylight-saving changes, what fits whom, the order groups are offered in, unique names."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ErrorCode, ServiceError
from gateway.auth import issue_token, verify_token
from matcher.groups import (
    GroupView,
    Schedule,
    competes,
    fits,
    next_session,
    order_key,
    parse_group_spec,
    parse_schedule,
    ranked,
    unique_name,
)
from matcher.profile import Profile
from matcher.vocabulary import load_vocabulary

VOCAB = load_vocabulary()
PARIS = {"weekday": 2, "time": "18:00", "tz": "Europe/Paris", "duration_min": 60}


def frame(**over):
    base = {"type": "create_group", "topic": {"kind": "diagnosis", "code": "breast"}, "language": "en",
            "title": "Tuesday evenings", "description": "A small circle"}
    base.update(over)
    return base


def code(exc: pytest.ExceptionInfo[ServiceError]) -> ErrorCode:
    return exc.value.code


def test_a_valid_group_with_defaults():
    spec = parse_group_spec(frame(), VOCAB)
    assert (spec.kind, spec.code, spec.language, spec.capacity, spec.schedule) == ("diagnosis", "breast", "en", 8,
                                                                                   None)
    spec = parse_group_spec(frame(topic={"kind": "side_effect", "code": "neuropathy"}, capacity=30,
                                  schedule=PARIS), VOCAB)
    assert spec.capacity == 30 and spec.schedule == Schedule(2, 18, 0, "Europe/Paris", 60)
    assert spec.schedule.as_json() == PARIS


@pytest.mark.parametrize("over", [
    {"topic": {"kind": "diagnosis", "code": "no-such-code"}},
    {"topic": {"kind": "side_effect", "code": "breast"}},        # a diagnosis code is not a side effect
    {"topic": {"kind": "mood", "code": "breast"}},
    {"topic": "breast"},
    {"language": "xx"},
    {"language": 3},
])
def test_unknown_topics_and_languages_are_invalid_profile(over):
    with pytest.raises(ServiceError) as exc:
        parse_group_spec(frame(**over), VOCAB)
    assert code(exc) == ErrorCode.INVALID_PROFILE


@pytest.mark.parametrize("over", [
    {"capacity": 2}, {"capacity": 31}, {"capacity": True}, {"capacity": 8.5},
    {"title": ""}, {"title": "   "}, {"title": "x" * 81}, {"description": "x" * 501},
    {"schedule": {"weekday": 0, "time": "18:00", "tz": "Europe/Paris"}},
    {"schedule": {"weekday": 8, "time": "18:00", "tz": "Europe/Paris"}},
    {"schedule": {"weekday": 2, "time": "24:00", "tz": "Europe/Paris"}},
    {"schedule": {"weekday": 2, "time": "6pm", "tz": "Europe/Paris"}},
    {"schedule": {"weekday": 2, "time": "18:00", "tz": "Mars/Olympus"}},
    {"schedule": {"weekday": 2, "time": "18:00", "tz": "Europe/Paris", "duration_min": 10}},
    {"schedule": {"weekday": 2, "time": "18:00", "tz": "Europe/Paris", "duration_min": 241}},
    {"schedule": "tuesdays"},
])
def test_bad_shapes_are_bad_frame(over):
    with pytest.raises(ServiceError) as exc:
        parse_group_spec(frame(**over), VOCAB)
    assert code(exc) == ErrorCode.BAD_FRAME


def test_next_session_is_the_next_one_not_yet_over():
    tuesday_6pm = parse_schedule(PARIS)
    paris = ZoneInfo("Europe/Paris")
    monday = datetime(2026, 12, 7, 12, 0, tzinfo=paris)
    assert next_session(tuesday_6pm, monday) == datetime(2026, 12, 8, 18, 0, tzinfo=paris)
    during = datetime(2026, 12, 8, 18, 30, tzinfo=paris)           # in progress: still this one
    assert next_session(tuesday_6pm, during) == datetime(2026, 12, 8, 18, 0, tzinfo=paris)
    after = datetime(2026, 12, 8, 19, 0, tzinfo=paris)             # over: next week's
    assert next_session(tuesday_6pm, after) == datetime(2026, 12, 15, 18, 0, tzinfo=paris)
    assert next_session(None, monday) is None


def test_next_session_keeps_local_time_across_daylight_saving():
    sunday = parse_schedule({"weekday": 7, "time": "10:00", "tz": "Europe/Paris", "duration_min": 60})
    # Paris moves to summer time on Sunday 28 March 2027 (02:00 -> 03:00)
    before = datetime(2027, 3, 27, 12, 0, tzinfo=UTC)
    start = next_session(sunday, before)
    assert start is not None and start.hour == 10 and start.utcoffset() == timedelta(hours=2)


@given(st.integers(1, 7), st.integers(0, 23), st.integers(0, 59), st.integers(15, 240),
       st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
       st.sampled_from(["Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]))
def test_next_session_properties(weekday, hour, minute, duration, naive, tz):
    schedule = Schedule(weekday, hour, minute, tz, duration)
    now = naive.replace(tzinfo=UTC)
    start = next_session(schedule, now)
    assert start is not None
    local = start.astimezone(ZoneInfo(tz))
    assert local.isoweekday() == weekday
    assert start + timedelta(minutes=duration) > now                 # not over
    assert start - timedelta(days=7) + timedelta(minutes=duration) <= now + timedelta(hours=3)  # the first such


def view(gid, kind="diagnosis", code="breast", language="en", members=3, capacity=8, at=None, created=0,
         is_open=True):
    return GroupView(gid, kind, code, language, members, capacity, at, created, is_open)


PAT = Profile(frozenset({"breast"}), frozenset({"neuropathy"}), frozenset({"en", "fr"}))


def test_fit_needs_the_same_topic_and_a_shared_language():
    assert fits(PAT, view("a"))
    assert fits(PAT, view("b", kind="side_effect", code="neuropathy", language="fr"))
    assert not fits(PAT, view("c", code="lung"))
    assert not fits(PAT, view("d", language="de"))
    assert not fits(PAT, view("e", kind="side_effect", code="breast"))


def test_order_diagnosis_first_then_room_then_soonest_then_oldest():
    t = datetime(2026, 12, 8, 18, 0, tzinfo=UTC)
    groups = [
        view("se-soon", kind="side_effect", code="neuropathy", at=t),
        view("dx-full-soon", members=8, at=t),
        view("dx-later", at=t + timedelta(days=2)),
        view("dx-unscheduled-old", created=1),
        view("dx-soon", at=t),
        view("dx-unscheduled-new", created=2),
        view("closed", at=t, is_open=False),
        view("other-topic", code="lung", at=t),
    ]
    assert [g.group_id for g in ranked(PAT, groups)] == [
        "dx-soon", "dx-later", "dx-unscheduled-old", "dx-unscheduled-new", "dx-full-soon", "se-soon"]
    assert order_key(view("x")) < order_key(view("x", kind="side_effect"))


def test_competing_seekers_share_a_topic_and_a_language():
    other = Profile(frozenset({"breast"}), frozenset(), frozenset({"fr"}))
    assert competes(PAT, other)
    assert not competes(PAT, Profile(frozenset({"breast"}), frozenset(), frozenset({"de"})))
    assert not competes(PAT, Profile(frozenset({"lung"}), frozenset({"fatigue"}), frozenset({"en"})))


def test_unique_names():
    assert unique_name("Sam", set()) == "Sam"
    assert unique_name("Sam", {"Sam"}) == "Sam 2"
    assert unique_name("Sam", {"Sam", "Sam 2", "Sam 3"}) == "Sam 4"


def test_only_a_survivor_carries_the_facilitator_claim():
    import jwt

    def signed(role, value):
        return jwt.encode({"sub": "u1", "role": role, "name": "Robin", "exp": 4102444800, "facilitator": value},
                          "s" * 40, algorithm="HS256")

    assert verify_token(signed("survivor", True), "s" * 40).facilitator is True
    assert verify_token(signed("patient", True), "s" * 40).facilitator is False
    assert verify_token(signed("survivor", "yes"), "s" * 40).facilitator is False
    assert verify_token(issue_token("s" * 40, sub="u2", role="survivor", name="Sam"), "s" * 40).facilitator is False
    ident = verify_token(issue_token("s" * 40, sub="u3", role="survivor", name="Ro", facilitator=True), "s" * 40)
    assert ident.facilitator and ident.public()["facilitator"] is True
