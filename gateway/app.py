"""The edge: HTTP routes, the WebSocket endpoint, and the only place errors become frames or closes."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from chat.crisis import normalise_locale
from chat.erasure import ERASED_REASON
from core.errors import CloseCode, ErrorCode, ServiceError, Unauthorized
from gateway import metrics
from gateway.auth import Identity, display_name, issue_token, verify_token
from gateway.compose import Gateway, build
from gateway.connection import Conn
from gateway.drain import Drain, DrainGate
from gateway.expiry import EXPIRED_REASON
from gateway.protocol import authorize, error_frame, parse_frame, parse_resume
from gateway.settings import Settings

log = logging.getLogger("aftertalk.gateway")
STATIC = Path(__file__).parent / "static"


def origin_allowed(ws: WebSocket, allowed: tuple[str, ...]) -> bool:
    """Cross-site WebSocket hijacking guard (CORS does not cover WebSockets)."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True                       # not a browser: nothing ambient to hijack
    if allowed:
        return origin in allowed or "*" in allowed
    host = ws.headers.get("host", "")
    return urlsplit(origin).netloc == host


class Edge:
    """Translates HTTP and WebSocket traffic into service calls; decides nothing about the domain."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.service = gateway.service
        self.drain = Drain()          # the graceful stop (gateway/drain.py), started by `aftertalk serve`

    def routes(self) -> list[Any]:
        return [
            Route("/healthz", self.healthz), Route("/readyz", self.readyz), Route("/metrics", self.metrics),
            Route("/api/vocabulary", self.vocabulary), Route("/api/demo-token", self.demo_token, methods=["POST"]),
            Route("/api/client-config", self.client_config),
            WebSocketRoute("/ws", self.websocket),
        ]

    # ---- HTTP ---------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "gateway": self.gateway.gateway_id})

    async def readyz(self, request: Request) -> Response:
        if self.drain.draining:         # stopping: send new connections elsewhere
            return JSONResponse({"status": "draining"}, status_code=503)
        try:
            await asyncio.wait_for(self.gateway.redis.ping(), 1.0)
        except Exception:
            return JSONResponse({"status": "unavailable", "redis": False}, status_code=503)
        if not self.gateway.hub.connected.is_set():
            return JSONResponse({"status": "unavailable", "redis": True, "pubsub": False}, status_code=503)
        return JSONResponse({"status": "ready", "redis": True, "pubsub": True})

    async def metrics(self, request: Request) -> Response:
        with contextlib.suppress(Exception):
            stats = await asyncio.wait_for(self.gateway.match.stats(), 1.0)
            metrics.update_store_gauges(stats, await self.gateway.match.queue_length())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.gateway.safety.screening_backlog(), 1.0)
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def vocabulary(self, request: Request) -> Response:
        lang = request.query_params.get("lang")     # ?lang=es: labels in Spanish where translated
        vocab = self.service.vocabulary
        return JSONResponse(vocab.localised(lang) if lang else vocab.as_json())

    async def client_config(self, request: Request) -> Response:
        """What the web client needs before sign-in: whether demo sign-in is on."""
        return JSONResponse({"demo": self.settings.demo})

    async def demo_token(self, request: Request) -> Response:
        """Demo mode only: anyone may pick a role and a pseudonym."""
        if not self.settings.demo:
            return JSONResponse({"error": "demo sign-in is off"}, status_code=404)
        try:
            body = orjson.loads(await request.body())
            role, name = body["role"], display_name(str(body["name"])[:4096])   # as verify_token cleans it
            sub = str(body.get("id") or "").strip()[:64] or f"demo-{role}-{name.lower().replace(' ', '-')}"
            token = issue_token(self.settings.secret, sub=sub, role=role, name=name or role,
                                locale=normalise_locale(body.get("locale")),
                                facilitator=role == "survivor" and body.get("facilitator") is True,
                                ttl_s=self.settings.demo_token_ttl_s,
                                audience=self.settings.jwt_audience, issuer=self.settings.jwt_issuer)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            return JSONResponse({"error": "send {\"role\": patient|survivor|moderator, \"name\": ...}"},
                                status_code=400)
        return JSONResponse({"token": token, "id": sub})

    # ---- WebSocket ----------------------------------------------------------------
    async def websocket(self, ws: WebSocket) -> None:
        s = self.settings
        if not origin_allowed(ws, s.allowed_origins):
            await ws.close(CloseCode.POLICY, "origin not allowed")
            return
        ip = ws.client.host if ws.client else "?"
        await ws.accept()
        # connection caps are leases in Redis, counted across every gateway (gateway/quotas.py): the
        # address's now, before hello; the user's after it (_session); both given back on close
        leases = self.gateway.leases
        lease = leases.new_lease()
        try:
            if not await leases.admit_address(ip, lease, s.max_conns_per_ip):
                await ws.close(CloseCode.TOO_MANY, "too many connections from this address")
                return
            await self._session(ws, lease)
        finally:
            await leases.release(lease)

    async def _hello(self, ws: WebSocket) -> tuple[Identity, dict[str, tuple[int, str | None]]]:
        s = self.settings
        try:
            msg = await asyncio.wait_for(ws.receive(), s.hello_timeout_s)
        except TimeoutError:
            raise Unauthorized("no hello in time") from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        text = msg.get("text")
        if text is None:
            raise Unauthorized("expected a hello text frame")
        try:
            frame = parse_frame(text)
        except ServiceError:
            raise Unauthorized("expected a hello frame") from None
        if frame["type"] != "hello":
            raise Unauthorized("the first frame must be hello")
        user = verify_token(frame["token"], s.secret, algorithms=s.jwt_algorithms,
                            audience=s.jwt_audience, issuer=s.jwt_issuer)
        if locale := normalise_locale(frame.get("locale")):     # the page's language, over the token's
            user = dataclasses.replace(user, locale=locale)
        if user.exp <= time.time():       # within verify_token's clock-skew leeway, but a session ends at exp
            raise Unauthorized(EXPIRED_REASON)
        try:
            resume = parse_resume(frame.get("resume"))
        except ServiceError:
            raise Unauthorized("malformed resume map") from None
        return user, resume

    async def _session(self, ws: WebSocket, lease: str) -> None:
        service = self.service
        try:
            user, resume = await self._hello(ws)
        except Unauthorized as exc:
            await ws.close(CloseCode.UNAUTHORIZED, exc.reason)
            return
        except WebSocketDisconnect:
            return
        try:
            if await service.match.is_erased(user.id, user.iat):
                await ws.close(CloseCode.UNAUTHORIZED, ERASED_REASON)
                return
            if await service.match.is_suspended(user.id):
                await ws.close(CloseCode.SUSPENDED, "suspended by a moderator")
                return
        except Exception:
            pass        # Redis down: let the session open; frames will get 'unavailable'
        if not await self.gateway.leases.admit_user(user.id, lease, self.settings.max_conns_per_user):
            await ws.close(CloseCode.TOO_MANY, "too many connections for this user")
            return
        conn = service.new_conn(ws, user, on_slow=lambda c: metrics.SLOW_CLOSES.inc())
        metrics.CONNECTIONS.labels(user.role).inc()
        service.token_clock.arm(conn)     # token_expiring ahead of exp, 4401 at exp unless a reauth came
        try:
            try:
                await service.open_session(conn, resume)
            except ServiceError as exc:
                self._error(conn, exc, "hello")
                conn.close(CloseCode.TRY_AGAIN, "the service store is unreachable; reconnect shortly")
                return
            # an erasure between the check above and the user channel's subscription published its
            # close before this gateway listened: look again now that the channel is confirmed
            with contextlib.suppress(Exception):
                if await service.match.is_erased(user.id, user.iat):
                    conn.close(CloseCode.UNAUTHORIZED, ERASED_REASON)
                    return
            await self._loop(ws, conn)
        finally:
            conn.disarm()
            metrics.CONNECTIONS.labels(user.role).dec()
            await service.close_session(conn)

    async def _loop(self, ws: WebSocket, conn: Conn) -> None:
        while not conn.closed:
            try:
                msg = await self.drain.next_frame(ws, conn)   # ws.receive(); none once draining
            except (RuntimeError, WebSocketDisconnect):   # closed under us (suspension, slow reader)
                return
            if msg["type"] == "websocket.disconnect" or conn.closed:   # closed while waiting (token expired, ...)
                return
            text = msg.get("text")
            if text is None:
                conn.close(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported; send JSON text")
                return
            ref = None
            try:
                if not conn.frames.take(time.monotonic()):
                    if conn.frames.tokens < -conn.frames.burst:
                        conn.close(CloseCode.TOO_MANY, "far too many frames")
                        return
                    conn.frames.tokens -= 1
                    raise ServiceError(ErrorCode.RATE_LIMITED, "Too many frames; this one was ignored.")
                frame = parse_frame(text)
                ref = frame["type"]
                if ref == "hello":
                    raise ServiceError(ErrorCode.BAD_FRAME, "Already signed in.")
                authorize(ref, conn.user.role)
                await self.gateway.dispatcher.dispatch(conn, frame)
            except ServiceError as exc:
                self._error(conn, exc, ref)
            except Exception:
                log.exception("unhandled error in a %s frame", ref)
                self._error(conn, ServiceError(ErrorCode.INTERNAL, "Something went wrong on our side."), ref)

    @staticmethod
    def _error(conn: Conn, exc: ServiceError, ref: str | None) -> None:
        metrics.ERRORS.labels(str(exc.code)).inc()
        data = dict(exc.data)
        ref = data.pop("ref", ref)
        conn.push(orjson.dumps(error_frame(exc.code, exc.message, ref, **data)).decode())

    # ---- app ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.gateway.start()
        try:
            yield
        finally:
            # `aftertalk serve` drained every socket before this (gateway/drain.py); this is for an app
            # served some other way, and for sessions that outlived the drain time
            for conns in list(self.gateway.hub.by_user.values()):
                for conn in list(conns):
                    conn.close(CloseCode.GOING_AWAY, "server shutting down")
            await asyncio.sleep(0.05)
            await self.gateway.stop()


def create_app(settings: Settings) -> Starlette:
    gateway = build(settings)
    edge = Edge(gateway)
    routes: list[Any] = [*edge.routes(), *gateway.safety.routes()]
    if STATIC.is_dir():
        routes.append(Mount("/", StaticFiles(directory=STATIC, html=True), name="static"))
    app = Starlette(routes=routes, lifespan=edge.lifespan, middleware=[Middleware(DrainGate, drain=edge.drain)])
    app.state.edge = edge
    app.state.drain = edge.drain
    return app
