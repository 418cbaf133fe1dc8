"""Error codes and WebSocket close codes: the whole vocabulary of failure.

Domain code raises :class:`ServiceError` carrying an :class:`ErrorCode` and
data; only the gateway's edge turns it into an ``error`` frame or a close.
"""
from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_FRAME = "bad_frame"                    # not JSON, not an object, or a field of the wrong type
    UNKNOWN_TYPE = "unknown_type"              # "type" is not a frame this server knows
    FORBIDDEN = "forbidden"                    # role or participant may not do this (never says whether a thing exists)
    INVALID_PROFILE = "invalid_profile"        # unknown codes, no topic, or no language
    NOT_FOUND = "not_found"                    # offer or request is gone (expired, taken, cancelled)
    ALREADY_MATCHED = "already_matched"        # the request was matched already
    TOO_LARGE = "too_large"                    # text longer than the limit
    RATE_LIMITED = "rate_limited"              # too many frames or messages; nothing was stored
    CONVERSATION_ENDED = "conversation_ended"  # the conversation is over
    UNAVAILABLE = "unavailable"                # Redis cannot be reached; nothing was stored, try again
    RECOVERY_FAILED = "recovery_failed"        # the log the client resumed from is gone; reload the transcript
    SUSPENDED = "suspended"                    # the user is suspended by a moderator
    REAUTH_REFUSED = "reauth_refused"          # a reauth token was not accepted; the session keeps its old token
    CAPACITY = "capacity"                      # a per-user or per-IP limit is reached
    GROUP_FULL = "group_full"                  # the group is at capacity: the user is on its waitlist
    GROUP_CLOSED = "group_closed"              # the group was closed by a facilitator or moderator
    MUTED = "muted"                            # a facilitator muted this member for a while; nothing was stored
    INTERNAL = "internal"                      # a bug; logged with a reference


class CloseCode(IntEnum):
    NORMAL = 1000             # the server or client ended the session normally
    GOING_AWAY = 1001         # the server is shutting down; reconnect elsewhere
    UNSUPPORTED_DATA = 1003   # a binary frame was sent; this protocol is JSON text only
    INVALID_PAYLOAD = 1007    # a text frame that is not valid UTF-8
    POLICY = 1008             # Origin not allowed
    TOO_BIG = 1009            # frame larger than the maximum frame size
    INTERNAL = 1011           # unexpected server error
    TRY_AGAIN = 1013          # the store is unreachable right now: reconnect with backoff and resume
    UNAUTHORIZED = 4401       # no hello, bad/expired/forged token, or a frame before hello
    SUSPENDED = 4403          # the user was suspended by a moderator
    TOO_MANY = 4429           # too many connections for this user or address, or frames far over the rate
    SLOW_CONSUMER = 4408      # the client did not read fast enough; reconnect and resume


class ServiceError(Exception):
    """A refusal the client can understand.  ``data`` is added to the error frame."""

    def __init__(self, code: ErrorCode, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


UNAVAILABLE_MESSAGE = "The service store is unreachable; this was not confirmed. Send it again."


def unavailable(message: str = UNAVAILABLE_MESSAGE) -> ServiceError:
    """The refusal for any call that could not reach Redis: the client retries with the same client id."""
    return ServiceError(ErrorCode.UNAVAILABLE, message)


class Unauthorized(Exception):
    """The connection must close with 4401; ``reason`` goes in the close frame."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
