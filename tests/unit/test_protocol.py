"""Frame parsing and the role table of gateway/protocol.py.

The expected role table is written out here from the issue texts, not read
from ``FRAMES``, so a change to who may send what is a deliberate test edit.
"""
from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ErrorCode, ServiceError
from gateway.protocol import FRAMES, MAX_ID, authorize, error_frame, parse_frame, parse_resume

P, S, M = "patient", "survivor", "moderator"
ROLES = (P, S, M)
WHO_MAY_SEND = {
    "hello": {P, S, M}, "reauth": {P, S, M}, "ping": {P, S, M}, "history": {P, S, M},
    "availability": {S}, "accept": {S}, "decline": {S},
    "talk_now": {P}, "cancel": {P},
    "widen": {P}, "talk_later": {P}, "cancel_later": {P}, "talk_again": {P},
    "keep_in_touch": {P, S}, "end_contact": {P, S},
    "send": {P, S}, "typing": {P, S}, "end": {P, S}, "block": {P, S}, "feedback": {P, S}, "report": {P, S},
    "watch_flags": {M}, "watch": {M}, "unwatch": {M}, "notice": {M}, "moderator_end": {M}, "suspend": {M},
    "resolve": {M},
    # issue 12: groups.  The role table lets survivors create and use the tools; gateway.groups then
    # refuses a survivor without the facilitator claim (tests/integration/test_groups_authz.py).
    "create_group": {S, M}, "list_groups": {P, S, M}, "find_group": {P, S}, "cancel_find_group": {P, S},
    "join_group": {P, S}, "leave_group": {P, S, M}, "mute_member": {S, M}, "remove_member": {S, M},
    "readmit_member": {M}, "pin": {S, M}, "close_group": {S, M},
}

# one valid value per field type, and values of every other JSON kind
VALID = {str: "x1", int: 3, bool: True, dict: {}, (int, float): 2.5}
JSON_KINDS = {"string": "s", "int": 7, "float": 1.5, "true": True, "false": False, "object": {"a": 1},
              "list": [1], "null": None}


def accepts(expected, value) -> bool:
    """What a field of this declared type must accept: bool is never a number, int is not a float."""
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, expected)


def minimal(ftype: str) -> dict:
    return {"type": ftype, **{name: VALID[t] for name, t in FRAMES[ftype].required.items()}}


def refused(text) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        parse_frame(text)
    return info.value


def dumps(frame) -> str:
    return orjson.dumps(frame).decode()


# ---------------------------------------------------------------- table completeness

def test_role_table_covers_exactly_the_documented_frames():
    assert set(FRAMES) == set(WHO_MAY_SEND)


@pytest.mark.parametrize("ftype", sorted(WHO_MAY_SEND))
@pytest.mark.parametrize("role", ROLES)
def test_authorize_every_frame_for_every_role(ftype, role):
    if role in WHO_MAY_SEND[ftype]:
        authorize(ftype, role)
    else:
        with pytest.raises(ServiceError) as info:
            authorize(ftype, role)
        assert info.value.code == ErrorCode.FORBIDDEN
        assert info.value.data["ref"] == ftype


@pytest.mark.parametrize("ftype", sorted(WHO_MAY_SEND))
def test_unknown_roles_may_send_nothing(ftype):
    with pytest.raises(ServiceError):
        authorize(ftype, "admin")


# ---------------------------------------------------------------- field typing, frame by frame

@pytest.mark.parametrize("ftype", sorted(FRAMES))
def test_minimal_frame_of_every_type_parses(ftype):
    frame = minimal(ftype)
    assert parse_frame(dumps(frame)) == frame
    assert parse_frame(dumps(frame).encode()) == frame          # bytes are accepted too


@pytest.mark.parametrize("ftype,name", [(t, n) for t in sorted(FRAMES) for n in FRAMES[t].required])
def test_missing_required_field_is_bad_frame(ftype, name):
    frame = minimal(ftype)
    del frame[name]
    err = refused(dumps(frame))
    assert err.code == ErrorCode.BAD_FRAME
    assert err.data == {"ref": ftype, "field": name}
    assert name in err.message


FIELD_CASES = [(t, n, expected, kind, value)
               for t in sorted(FRAMES)
               for n, expected in {**FRAMES[t].required, **FRAMES[t].optional}.items()
               for kind, value in JSON_KINDS.items()
               if not (value is None and n in FRAMES[t].optional)]


@pytest.mark.parametrize("ftype,name,expected,kind,value", FIELD_CASES,
                         ids=[f"{t}.{n}={k}" for t, n, _, k, _ in FIELD_CASES])
def test_every_field_accepts_its_type_and_refuses_every_other(ftype, name, expected, kind, value):
    frame = {**minimal(ftype), name: value}
    if accepts(expected, value):
        assert parse_frame(dumps(frame))[name] == value
    else:
        err = refused(dumps(frame))
        assert err.code == ErrorCode.BAD_FRAME, (ftype, name, kind)
        assert err.data == {"ref": ftype, "field": name}


@pytest.mark.parametrize("ftype,name", [(t, n) for t in sorted(FRAMES) for n in FRAMES[t].optional])
def test_optional_fields_may_be_absent_or_null(ftype, name):
    frame = minimal(ftype)
    assert name not in parse_frame(dumps(frame))
    assert parse_frame(dumps({**frame, name: None}))[name] is None


@pytest.mark.parametrize("frame,field", [
    ({"type": "availability", "available": 1}, "available"),                 # int is not bool
    ({"type": "availability", "available": True, "max_chats": True}, "max_chats"),   # bool is not int
    ({"type": "availability", "available": True, "max_chats": 1.0}, "max_chats"),    # float is not int
    ({"type": "availability", "available": True, "auto_accept": 0}, "auto_accept"),
    ({"type": "talk_now", "profile": {}, "prefer_same_diagnosis_s": False}, "prefer_same_diagnosis_s"),
    ({"type": "feedback", "conversation_id": "c", "rating": True}, "rating"),
    ({"type": "history", "conversation_id": "c", "limit": False}, "limit"),
    ({"type": "suspend", "user_id": "u", "reason": "r", "until": True}, "until"),
])
def test_bool_and_int_are_not_interchangeable(frame, field):
    err = refused(dumps(frame))
    assert err.code == ErrorCode.BAD_FRAME and err.data["field"] == field


def test_numbers_may_be_int_or_float_where_declared():
    assert parse_frame(dumps({"type": "talk_now", "profile": {}, "prefer_same_diagnosis_s": 30}))
    assert parse_frame(dumps({"type": "talk_now", "profile": {}, "prefer_same_diagnosis_s": 30.5}))


@pytest.mark.parametrize("name", ["conversation_id", "client_id", "offer_id", "flag_id", "user_id"])
def test_id_fields_must_be_1_to_max_characters(name):
    ftype = next(t for t in sorted(FRAMES) if name in FRAMES[t].required)
    assert parse_frame(dumps({**minimal(ftype), name: "a" * MAX_ID}))
    for bad in ("", "a" * (MAX_ID + 1)):
        err = refused(dumps({**minimal(ftype), name: bad}))
        assert err.code == ErrorCode.BAD_FRAME and err.data["field"] == name


def test_unknown_fields_are_ignored():
    assert parse_frame(dumps({"type": "ping", "extra": [1, 2], "nested": {"x": None}}))["type"] == "ping"


# ---------------------------------------------------------------- whole-frame errors

@pytest.mark.parametrize("text", ["", "{", "not json", "{'type': 'ping'}", '{"type": "ping"', b"\xff\xfe"])
def test_malformed_json_is_bad_frame_without_ref(text):
    err = refused(text)
    assert err.code == ErrorCode.BAD_FRAME
    assert "ref" not in err.data


@pytest.mark.parametrize("text", ["[]", '["ping"]', "1", "1.5", '"ping"', "null", "true"])
def test_non_object_json_is_bad_frame(text):
    err = refused(text)
    assert err.code == ErrorCode.BAD_FRAME
    assert "object" in err.message


@pytest.mark.parametrize("frame", [{}, {"type": None}, {"type": 1}, {"type": True}, {"type": ["ping"]},
                                   {"type": {"name": "ping"}}])
def test_type_must_be_a_string(frame):
    err = refused(dumps(frame))
    assert err.code == ErrorCode.BAD_FRAME


@pytest.mark.parametrize("ftype", ["", "PING", "talkNow", "welcome", "error", "matched", "x" * 500])
def test_unknown_type(ftype):
    err = refused(dumps({"type": ftype}))
    assert err.code == ErrorCode.UNKNOWN_TYPE
    assert err.data["ref"] == ftype[:40]          # echoed, but bounded


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12),
       st.sampled_from(sorted(FRAMES)))
def test_parse_frame_only_ever_raises_service_errors(value, ftype):
    extra = value if isinstance(value, dict) else {}
    for candidate in (value, {"type": ftype, "x": value}, {**minimal(ftype), **extra}):
        try:
            frame = parse_frame(json.dumps(candidate))      # stdlib: also big ints orjson cannot write
        except ServiceError as exc:
            assert exc.code in (ErrorCode.BAD_FRAME, ErrorCode.UNKNOWN_TYPE)
        else:
            assert isinstance(frame, dict) and frame["type"] in FRAMES


# ---------------------------------------------------------------- helpers

def test_error_frame_shape():
    assert error_frame(ErrorCode.FORBIDDEN, "No.", "talk_now", field="x") == {
        "type": "error", "code": "forbidden", "message": "No.", "ref": "talk_now", "field": "x"}
    assert error_frame("bad_frame", "m", None)["ref"] is None


def test_parse_resume():
    assert parse_resume(None) == {}
    assert parse_resume({"c1": 0, "c2": 5}) == {"c1": (0, None), "c2": (5, None)}
    assert parse_resume({"c1": {"seq": 3, "epoch": "e1"}}) == {"c1": (3, "e1")}
    for bad in ([], {"c": -1}, {"c": True}, {"c": 1.5}, {"c": "3"}, {"": 1}, {"c": {"seq": 1, "epoch": 5}},
                {"c" * (MAX_ID + 1): 1}, {f"c{i}": 1 for i in range(101)}):
        with pytest.raises(ServiceError) as info:
            parse_resume(bad)
        assert info.value.code == ErrorCode.BAD_FRAME and info.value.data["ref"] == "hello"


@pytest.mark.parametrize("token", [None, 7, "", "x" * 4097, {"t": 1}])
def test_a_reauth_needs_a_token_string_of_1_to_4096_characters(token):
    with pytest.raises(ServiceError) as info:
        parse_frame(orjson.dumps({"type": "reauth", "token": token}))
    assert info.value.code == ErrorCode.BAD_FRAME
    assert info.value.data == {"ref": "reauth", "field": "token"}
    assert parse_frame(orjson.dumps({"type": "reauth", "token": "x" * 4096}))["token"] == "x" * 4096
