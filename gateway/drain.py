"""Graceful drain: how a stopping gateway lets its clients go without losing anything they were told.

``aftertalk serve`` (``gateway/cli.py``) starts the drain the moment it is told to stop (``SIGTERM``,
``SIGINT`` or ``SIGHUP``), before uvicorn closes anything:

1. ``/readyz`` answers 503 ``{"status": "draining"}`` at once, so a load balancer that polls it stops
   sending new connections;
2. new WebSocket upgrades are refused with HTTP 503 (``Retry-After: 1``) by :class:`DrainGate`, so
   nginx (``proxy_next_upstream ... http_503`` on ``/ws``) retries them on another gateway;
3. a frame being handled when the drain begins is finished: its answer (the ``ack`` of a ``send``) is
   queued and written before the close frame.  A frame read after the drain began is not handled; its
   sender got no answer and sends it again after resuming elsewhere (sends are idempotent per
   ``client_id``);
4. every WebSocket is closed with 1001 (``server restarting``): idle ones at once, busy ones right after
   their frame, ones still waiting for their ``hello`` at once;
5. the drain ends when every session has ended and every client has answered the close, or after
   ``AFTERTALK_DRAIN_S``, whichever comes first; uvicorn then closes what is left and the process exits.

A session's end runs the usual clean-up (``Service.close_session``): the user's presence on this
gateway goes, so a survivor's pending offers are withdrawn and offered again when they are back, and a
waiting patient keeps their place for the grace period.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from core.errors import CloseCode
from gateway.connection import Conn

log = logging.getLogger("aftertalk.drain")
REASON = "server restarting"
REFUSAL = b"this gateway is shutting down: connect again (to any gateway) and resume\n"
DISCONNECTED: Message = {"type": "websocket.disconnect", "code": int(CloseCode.GOING_AWAY)}


@dataclass(eq=False)
class _Session:
    """One WebSocket session as the ASGI server sees it (kept by :class:`DrainGate`)."""

    send: Send
    accepted: bool = False
    received: int = 0            # ASGI messages handed to the app (the first is websocket.connect)
    waiting: bool = False        # the app is waiting in receive()
    cut: bool = False            # closed by the drain before its hello was read


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.started = 0.0
        self.idle: set[Conn] = set()             # signed-in connections waiting for their next frame
        self.sessions: set[_Session] = set()     # every WebSocket session in progress

    def begin(self) -> None:
        """Start refusing (readyz, upgrades).  Safe to call from a signal handler, and more than once."""
        if not self.draining:
            self.started = time.monotonic()
            self.draining = True

    async def next_frame(self, ws: WebSocket, conn: Conn) -> Message:
        """``ws.receive()`` for a signed-in connection's read loop, which takes no new frame once draining.

        Called between frames, so a connection that gets here while draining has its last frame's answer
        queued: it is closed (1001) behind it, and this returns a disconnect once the close frame is out."""
        if not self.draining:
            self.idle.add(conn)
            try:
                msg = await ws.receive()
            finally:
                self.idle.discard(conn)
            if not self.draining or msg["type"] != "websocket.receive":
                return msg
        conn.close(CloseCode.GOING_AWAY, REASON)       # writes what is queued first (the acks), then closes
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                # frames still queued from before the close are dropped (their senders got no answer and
                # resend after resuming); the server's own close, once sent, comes back as the disconnect
                while (await ws.receive())["type"] != "websocket.disconnect":
                    pass
        return DISCONNECTED

    async def run(self, drain_s: float, aborted: Callable[[], bool] = lambda: False) -> bool:
        """Close every WebSocket with 1001 and wait for the sessions to end, for at most ``drain_s``
        from :meth:`begin`.  True when every session ended in time."""
        self.begin()
        deadline = self.started + drain_s
        log.info("draining: %d WebSocket session(s) to close (at most %.3g s)", len(self.sessions), drain_s)
        while self.sessions and time.monotonic() < deadline and not aborted():
            for conn in list(self.idle):
                conn.close(CloseCode.GOING_AWAY, REASON)
            for session in list(self.sessions):
                if session.accepted and session.received == 1 and session.waiting and not session.cut:
                    session.cut = True                  # accepted, waiting for its hello: nothing to flush
                    with contextlib.suppress(Exception):
                        await session.send({"type": "websocket.close", "code": int(CloseCode.GOING_AWAY),
                                            "reason": REASON})
            await asyncio.sleep(0.02)
        left = len(self.sessions)
        if left:
            log.warning("drain: %d WebSocket session(s) still open after %.3g s; closing them now", left, drain_s)
        else:
            log.info("drained in %.3f s", time.monotonic() - self.started)
        return not left


class DrainGate:
    """ASGI middleware: keeps count of the WebSocket sessions and refuses new ones while draining."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            await self._refuse(scope, receive, send)
            return
        session = _Session(send)

        async def tracked_receive() -> Message:
            session.waiting = True
            try:
                msg = await receive()
            finally:
                session.waiting = False
            if session.cut:             # the drain closed it before its hello: whatever was queued is moot
                return DISCONNECTED
            session.received += 1
            return msg

        async def tracked_send(message: Message) -> None:
            if message["type"] == "websocket.accept":
                session.accepted = True
            elif session.cut and message["type"] == "websocket.close":
                return                  # already closed by the drain
            await send(message)

        self.drain.sessions.add(session)
        try:
            await self.app(scope, tracked_receive, tracked_send)
        finally:
            self.drain.sessions.discard(session)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
        """HTTP 503 to the upgrade (a load balancer may retry it elsewhere); a plain 403 where the
        server cannot send a response to an upgrade."""
        await receive()                 # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            headers: list[tuple[bytes, bytes]] = [(b"content-type", b"text/plain; charset=utf-8"),
                                                  (b"retry-after", b"1"),
                                                  (b"content-length", str(len(REFUSAL)).encode())]
            await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": REFUSAL})
        else:
            await send({"type": "websocket.close", "code": int(CloseCode.GOING_AWAY), "reason": REASON})


def drained_app(app: Any) -> Drain | None:
    """The :class:`Drain` of an app made by :func:`gateway.app.create_app` (None for any other app)."""
    return getattr(getattr(app, "state", None), "drain", None)
