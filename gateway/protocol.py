"""Client frame parsing and the role table.  Pure: no I/O, no awaits.

``parse_frame`` turns one text frame into a validated dict or raises
ServiceError(bad_frame | unknown_type).  ``authorize`` applies the role
table.  Field-level rules that need the vocabulary (profiles) or state
(participants) live with the handlers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from core.errors import ErrorCode, ServiceError

PATIENT, SURVIVOR, MODERATOR = "patient", "survivor", "moderator"
PEERS = frozenset({PATIENT, SURVIVOR})
ANYONE = frozenset({PATIENT, SURVIVOR, MODERATOR})
LEADERS = frozenset({SURVIVOR, MODERATOR})     # survivors only with the facilitator claim (gateway.groups)
MAX_ID = 128
MAX_TOKEN = 4096          # as gateway.auth.verify_token (and the smallest frame limit allows)


@dataclass(frozen=True)
class Spec:
    roles: frozenset[str]
    required: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    optional: dict[str, type | tuple[type, ...]] = field(default_factory=dict)


NUM = (int, float)
FRAMES: dict[str, Spec] = {
    "hello": Spec(ANYONE, {"token": str}, {"resume": dict}),
    "reauth": Spec(ANYONE, {"token": str}),
    "ping": Spec(ANYONE),
    "availability": Spec(frozenset({SURVIVOR}), {"available": bool},
                         {"profile": dict, "max_chats": int, "auto_accept": bool}),
    "talk_now": Spec(frozenset({PATIENT}), {"profile": dict}, {"prefer_same_diagnosis_s": NUM}),
    "cancel": Spec(frozenset({PATIENT})),
    "accept": Spec(frozenset({SURVIVOR}), {"offer_id": str}),
    "decline": Spec(frozenset({SURVIVOR}), {"offer_id": str}),
    "send": Spec(PEERS, {"conversation_id": str, "client_id": str, "text": str}),
    "history": Spec(ANYONE, {"conversation_id": str}, {"before_seq": int, "limit": int}),
    "typing": Spec(PEERS, {"conversation_id": str}),
    "end": Spec(PEERS, {"conversation_id": str}),
    "block": Spec(PEERS, {"conversation_id": str}),
    "feedback": Spec(PEERS, {"conversation_id": str, "rating": int}, {"comment": str}),
    "report": Spec(PEERS, {"conversation_id": str, "reason": str}),
    "watch_flags": Spec(frozenset({MODERATOR})),
    "watch": Spec(frozenset({MODERATOR}), {"conversation_id": str}),
    "unwatch": Spec(frozenset({MODERATOR}), {"conversation_id": str}),
    "notice": Spec(frozenset({MODERATOR}), {"conversation_id": str, "text": str}),
    "moderator_end": Spec(frozenset({MODERATOR}), {"conversation_id": str, "reason": str}),
    "suspend": Spec(frozenset({MODERATOR}), {"user_id": str, "reason": str}, {"until": NUM}),
    "resolve": Spec(frozenset({MODERATOR}), {"flag_id": str, "resolution": str}, {"outcome": str}),
    # issue 14: wider matches, talk-later requests, keeping in touch
    "widen": Spec(frozenset({PATIENT}), {"profile": dict}, {"prefer_same_diagnosis_s": NUM}),
    "talk_later": Spec(frozenset({PATIENT}), {"profile": dict}, {"within_h": NUM, "note": str}),
    "cancel_later": Spec(frozenset({PATIENT}), {"request_id": str}),
    "keep_in_touch": Spec(PEERS, {"conversation_id": str}),
    "talk_again": Spec(frozenset({PATIENT}), {"contact_id": str}),
    "end_contact": Spec(PEERS, {"contact_id": str}),
    # issue 12: groups.  Facilitators are survivors with the claim; gateway.groups checks it (and membership).
    "create_group": Spec(LEADERS, {"topic": dict, "language": str, "title": str},
                         {"description": str, "capacity": int, "schedule": dict}),
    "list_groups": Spec(ANYONE, {}, {"profile": dict}),
    "find_group": Spec(PEERS, {"profile": dict}),
    "cancel_find_group": Spec(PEERS),
    "join_group": Spec(PEERS, {"group_id": str}),
    "leave_group": Spec(ANYONE, {"group_id": str}),
    "mute_member": Spec(LEADERS, {"group_id": str, "name": str, "minutes": int}),
    "remove_member": Spec(LEADERS, {"group_id": str, "name": str}, {"reason": str}),
    "readmit_member": Spec(frozenset({MODERATOR}), {"group_id": str, "name": str}),
    "pin": Spec(LEADERS, {"group_id": str, "text": str}),
    "close_group": Spec(LEADERS, {"group_id": str}, {"reason": str}),
}
ID_FIELDS = ("conversation_id", "client_id", "offer_id", "flag_id", "user_id", "request_id", "contact_id",
             "group_id", "name")


def _kind(expected: type | tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object"}
    if isinstance(expected, tuple):
        return "a number"
    return names.get(expected, expected.__name__)


def _check(frame: dict[str, Any], name: str, expected: type | tuple[type, ...], ftype: str) -> None:
    value = frame[name]
    ok = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
    if ok and isinstance(value, float) and value != value:  # NaN cannot come from JSON, but be strict
        ok = False
    if not ok:
        raise ServiceError(ErrorCode.BAD_FRAME, f"'{name}' must be {_kind(expected)}.", ref=ftype, field=name)
    if name in ID_FIELDS and not (0 < len(value) <= MAX_ID):
        raise ServiceError(ErrorCode.BAD_FRAME, f"'{name}' must be 1 to {MAX_ID} characters.", ref=ftype, field=name)
    if name == "token" and not (0 < len(value) <= MAX_TOKEN):
        raise ServiceError(ErrorCode.BAD_FRAME, f"'token' must be 1 to {MAX_TOKEN} characters.", ref=ftype, field=name)


def parse_frame(text: str | bytes) -> dict[str, Any]:
    """Decode and validate one client frame (types of known fields; unknown fields are ignored)."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ServiceError(ErrorCode.BAD_FRAME, "Frames must be JSON text.") from None
    if not isinstance(frame, dict):
        raise ServiceError(ErrorCode.BAD_FRAME, "A frame must be a JSON object.")
    ftype = frame.get("type")
    if not isinstance(ftype, str):
        raise ServiceError(ErrorCode.BAD_FRAME, "A frame needs a string 'type'.")
    spec = FRAMES.get(ftype)
    if spec is None:
        raise ServiceError(ErrorCode.UNKNOWN_TYPE, "Unknown frame type.", ref=ftype[:40])
    for name, expected in spec.required.items():
        if name not in frame:
            raise ServiceError(ErrorCode.BAD_FRAME, f"'{name}' is required.", ref=ftype, field=name)
        _check(frame, name, expected, ftype)
    for name, expected in spec.optional.items():
        if name in frame and frame[name] is not None:
            _check(frame, name, expected, ftype)
    return frame


def authorize(ftype: str, role: str) -> None:
    if role not in FRAMES[ftype].roles:
        raise ServiceError(ErrorCode.FORBIDDEN, "Your role may not do that.", ref=ftype)


def error_frame(code: ErrorCode | str, message: str, ref: str | None, **data: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": str(code), "message": message, "ref": ref}
    frame.update(data)
    return frame


def parse_resume(raw: Any) -> dict[str, tuple[int, str | None]]:
    """``{"cid": last_seq}`` or ``{"cid": {"seq": n, "epoch": e}}`` → {cid: (seq, epoch)}."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > 100:
        raise ServiceError(ErrorCode.BAD_FRAME, "'resume' must map at most 100 conversation ids to seq.", ref="hello")
    out: dict[str, tuple[int, str | None]] = {}
    for cid, value in raw.items():
        epoch = None
        if isinstance(value, dict):
            epoch, value = value.get("epoch"), value.get("seq")
            if epoch is not None and not isinstance(epoch, str):
                raise ServiceError(ErrorCode.BAD_FRAME, "'epoch' must be a string.", ref="hello")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or not (0 < len(cid) <= MAX_ID):
            raise ServiceError(ErrorCode.BAD_FRAME, "Each resume entry needs a non-negative integer seq.", ref="hello")
        out[cid] = (value, epoch)
    return out
