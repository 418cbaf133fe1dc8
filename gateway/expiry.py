"""A session does not outlive its token: ``token_expiring`` ahead of ``exp``, ``reauth``, and 4401 at ``exp``.

Every connection holds at most one timer at a time, a :class:`asyncio.TimerHandle` in the event
loop's own heap (``loop.call_at``): first the warning, then, once the warning is out, the close at
``exp``.  No task sleeps per connection; 10,000 connections are 10,000 heap entries of about a
hundred bytes, and a timer costs nothing until it fires.  A ``reauth`` cancels the timer and arms
one for the new token; a closed connection cancels its own (:meth:`gateway.connection.Conn.disarm`).

The timers run on the loop's monotonic clock, but ``exp`` is wall-clock time: when the close timer
fires it looks at the wall clock again and waits a little longer if the two clocks drifted apart, so
a session never ends before its ``exp``, and ends at most a few milliseconds after it.

:func:`warn_lead` (when to warn) and :func:`reauthorized` (what a fresh token may change) are pure.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from core.errors import CloseCode, ErrorCode, ServiceError

if TYPE_CHECKING:
    from gateway.auth import Identity
    from gateway.connection import Conn

EXPIRED_REASON = "token expired"
SLACK_S = 0.005            # the close timer fired this early (clock drift): wait again rather than close


def warn_lead(remaining_s: float, ahead_s: float) -> float:
    """How many seconds before ``exp`` to send ``token_expiring``: ``ahead_s``, but at most half of
    what is left of the token when the session starts (or is reauthorized), so a short token is not
    warned about at once and its client still has half its life to fetch a new one.  0 when the
    token has nothing left."""
    if remaining_s <= 0:
        return 0.0
    return min(ahead_s, remaining_s / 2)


def reauthorized(current: Identity, fresh: Identity, now: float) -> Identity:
    """The identity a connection continues with after a ``reauth`` with ``fresh`` (already verified:
    signature, algorithm, audience, issuer).  Raises ``reauth_refused`` unless ``fresh`` is for the
    same user and role and has not expired.  The connection keeps the display name it signed in with
    (peers were told it in ``matched`` and see it on every message); a new name in the token takes
    effect at the next sign-in.  The new ``exp`` and ``iat`` replace the old ones."""
    if fresh.id != current.id:
        raise refused("That token is for another user.", "other_user")
    if fresh.role != current.role:
        raise refused("That token is for another role.", "other_role")
    if fresh.exp <= now:
        raise refused("That token has expired.", "token_expired")
    return dataclasses.replace(current, exp=fresh.exp, iat=fresh.iat)


def refused(message: str, reason: str) -> ServiceError:
    return ServiceError(ErrorCode.REAUTH_REFUSED, message + " This connection still ends when its token expires.",
                        reason=reason)


class TokenClock:
    """Arms each connection's token timer (one per process, shared by every connection)."""

    def __init__(self, ahead_s: float, wall: Callable[[], float] = time.time) -> None:
        self.ahead_s = ahead_s
        self.wall = wall

    def arm(self, conn: Conn) -> None:
        """(Re)start ``conn``'s timer for the token it holds now: warn at ``exp - warn_lead``."""
        conn.disarm()
        if conn.closed:
            return
        remaining = conn.user.exp - self.wall()
        if remaining <= 0:
            conn.close(CloseCode.UNAUTHORIZED, EXPIRED_REASON)
            return
        loop = asyncio.get_running_loop()
        conn.expiry = loop.call_at(loop.time() + remaining - warn_lead(remaining, self.ahead_s), self._warn, conn)

    def _warn(self, conn: Conn) -> None:
        conn.expiry = None
        if conn.closed:
            return
        remaining = max(0.0, conn.user.exp - self.wall())
        exp = conn.user.exp
        conn.push(orjson.dumps({"type": "token_expiring", "in_s": round(remaining, 1),
                                "exp": int(exp) if exp.is_integer() else exp}).decode())
        loop = asyncio.get_running_loop()
        conn.expiry = loop.call_at(loop.time() + remaining, self._expire, conn)

    def _expire(self, conn: Conn) -> None:
        conn.expiry = None
        if conn.closed:
            return
        remaining = conn.user.exp - self.wall()
        if remaining > SLACK_S:       # the monotonic and wall clocks drifted: not yet
            loop = asyncio.get_running_loop()
            conn.expiry = loop.call_at(loop.time() + remaining, self._expire, conn)
            return
        conn.close(CloseCode.UNAUTHORIZED, EXPIRED_REASON)
