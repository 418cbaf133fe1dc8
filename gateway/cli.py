"""``aftertalk``: serve, token, erase-user, audit."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import signal
import sys
import time
from types import FrameType
from typing import Any

from gateway.settings import ENV_NAMES, Settings, SettingsError

log = logging.getLogger("aftertalk")
MIN_SECRET = 32


class _StopRequested(BaseException):
    """A stop signal arrived while ``serve`` was still starting: unwind through its clean-up."""


class _StopSignals:
    """``serve``'s own SIGTERM, SIGINT and SIGHUP handlers, installed for its whole life.

    While the server runs, each signal starts the drain and asks uvicorn for its graceful shutdown (a
    second SIGINT forces it), exactly as uvicorn's own handler would (see :class:`_DrainingServer`);
    before that, it unwinds the start-up.  Either way
    ``serve``'s ``finally`` then stops the screening workers and the embedded Redis.  uvicorn swaps
    in its own SIGINT/SIGTERM handlers while it serves and re-raises the signal afterwards with the
    previous handler back in place: that previous handler is this one, so the re-raise lands here
    instead of killing the process (with ``SIG_DFL``) before the clean-up has run.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.server: Any = None          # the uvicorn.Server once it runs
        self.received: list[int] = []
        self.finishing = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.finishing:
            return                       # already stopping: let the clean-up finish
        if self.server is None:
            raise _StopRequested(signum)
        if self.server.should_exit and signum == signal.SIGINT:
            self.server.force_exit = True
        self.server.should_exit = True
        self.server.begin_drain()


def _quiet_refusals(record: logging.LogRecord) -> bool:
    return record.getMessage() != "ASGI callable returned without completing handshake."


def _draining_server(config: Any, drain_s: float) -> Any:
    """A uvicorn.Server that drains the app's WebSockets (gateway/drain.py) before its own shutdown.

    uvicorn's shutdown closes the listening socket first and then every WebSocket with 1012; instead,
    the drain runs first, with the socket still open: /readyz says 503 and upgrades get 503 from the
    moment the signal arrives (``handle_exit``, the handler uvicorn installs while it serves, and
    ``_StopSignals`` for SIGHUP), every socket is closed with 1001 once its frame in flight is answered,
    and the clients' answers to the close are awaited, all within ``drain_s`` of the signal.  A second
    SIGINT (``force_exit``) cuts the wait short."""
    import uvicorn
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from gateway.drain import drained_app

    class _DrainingServer(uvicorn.Server):
        def begin_drain(self) -> None:
            drain = drained_app(self.config.app)
            if drain is not None:
                drain.begin()
                # uvicorn logs an ERROR for every upgrade answered with an HTTP response (the drain's 503)
                logging.getLogger("uvicorn.error").addFilter(_quiet_refusals)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self.begin_drain()

        async def shutdown(self, sockets: Any = None) -> None:
            drain = drained_app(self.config.app)
            if drain is not None:
                await drain.run(drain_s, lambda: self.force_exit)
                deadline = drain.started + drain_s
                # the clients' close frames: a WebSocket's transport ends when its client answers the close
                while (not self.force_exit and time.monotonic() < deadline
                       and any(isinstance(c, WebSocketsSansIOProtocol) for c in self.server_state.connections)):
                    await asyncio.sleep(0.02)
            await super().shutdown(sockets)

    return _DrainingServer(config)


def _serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env(host=args.host, port=args.port, redis_url=args.redis_url,
                                 data_dir=args.data_dir, demo=True if args.demo else None)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(settings.secret.encode()) < MIN_SECRET:
        if not settings.demo:
            print(f"aftertalk: {ENV_NAMES['secret']} must be at least {MIN_SECRET} bytes (or use --demo).",
                  file=sys.stderr)
            return 2
        settings = Settings(**{**settings.__dict__, "secret": secrets.token_urlsafe(48)})
        log.warning("demo mode: made up a signing secret for this run; tokens die with the process")
    if not settings.demo and not settings.allowed_origins:
        log.warning("%s is empty: /ws accepts a browser Origin only when it matches the request's Host header, "
                    "which a non-browser client chooses freely; set it to the origins the web client is "
                    "served from", ENV_NAMES["allowed_origins"])
    stop = _StopSignals()
    try:
        stop.install()
        return _run_serve(settings, stop)
    except _StopRequested:
        return 0                         # stopped while starting; everything started is stopped
    finally:
        stop.restore()


def _run_serve(settings: Settings, stop: _StopSignals) -> int:
    import uvicorn

    from gateway import log_privacy
    from gateway.app import create_app
    from gateway.embedded import EmbeddedRedis

    embedded: EmbeddedRedis | None = None
    workers = None
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis(settings.data_dir)     # started here, on the main thread (PDEATHSIG)
            try:
                settings = Settings(**{**settings.__dict__, "redis_url": embedded.start()})
            except RuntimeError as exc:                     # data dir in use, a leftover server, no binary
                print(f"aftertalk: {exc}", file=sys.stderr)
                return 3
        if settings.screening and settings.screening_workers:
            from gateway.screening import WorkerSupervisor

            workers = WorkerSupervisor(settings.screening_workers, settings.redis_url)
            try:
                workers.start()
            except RuntimeError as exc:
                print(f"aftertalk: {exc}", file=sys.stderr)
                return 3
        print(f"Aftertalk is up: open http://{settings.host}:{settings.port}/", flush=True)
        config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                                log_level=settings.log_level, ws="websockets-sansio",
                                ws_max_size=settings.max_frame_bytes, ws_per_message_deflate=False,
                                ws_ping_interval=settings.ping_interval_s, ws_ping_timeout=settings.ping_timeout_s,
                                lifespan="on", access_log=False, proxy_headers=True, server_header=False,
                                timeout_graceful_shutdown=2)   # after the drain: only what outlived it
        log_privacy.install()        # after uvicorn configured logging: no frame, text or token in any log line
        server = _draining_server(config, settings.drain_s)
        stop.server = server
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        if not server.started and not stop.received:
            return 3             # could not start (port taken, startup failed), as uvicorn.run reports it
    finally:
        stop.finishing = True
        if workers:
            workers.stop()
        if embedded:
            embedded.stop()
    if stop.received:
        log.info("stopped by %s; shut down cleanly", signal.Signals(stop.received[0]).name)
    return 0


def _moderate(args: argparse.Namespace) -> int:
    from gateway.screening import moderate

    settings = Settings.from_env(redis_url=args.redis_url)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.redis_url:
        print(f"aftertalk: pass --redis-url or set {ENV_NAMES['redis_url']}.", file=sys.stderr)
        return 2
    return moderate(settings)


def _token(args: argparse.Namespace) -> int:
    from gateway.auth import issue_token

    settings = Settings.from_env()
    if len(settings.secret.encode()) < MIN_SECRET:
        print(f"aftertalk: set {ENV_NAMES['secret']} (at least {MIN_SECRET} bytes) to sign tokens.", file=sys.stderr)
        return 2
    print(issue_token(settings.secret, sub=args.sub, role=args.role, name=args.name, ttl_s=args.ttl,
                      audience=settings.jwt_audience, issuer=settings.jwt_issuer))
    return 0


def _store_command(args: argparse.Namespace) -> int:
    settings = Settings.from_env(redis_url=args.redis_url)
    if not settings.redis_url:
        print(f"aftertalk: pass --redis-url or set {ENV_NAMES['redis_url']}.", file=sys.stderr)
        return 2
    return asyncio.run(_run_store_command(args, settings))


def _groups_for_erasure(redis: Any, keys: Any, settings: Settings) -> Any:
    """The groups service as erase-user needs it: to tell a group's members that an erased member
    left, and whoever moved up from its waitlist that they joined (pub/sub only; nothing is run)."""
    from chat.audit import AuditLog
    from chat.groups import GroupStore
    from chat.store import ChatStore
    from gateway.groups import Groups
    from gateway.hub import Hub
    from matcher.vocabulary import load_vocabulary

    store = GroupStore(redis, keys, max_groups_per_user=settings.max_groups_per_user)
    return Groups(settings, store=store, hub=Hub(redis, keys, ChatStore(redis, keys)), audit_log=AuditLog(redis, keys),
                  vocabulary=load_vocabulary())


async def _run_store_command(args: argparse.Namespace, settings: Settings) -> int:
    from core.keys import Keys
    from core.redis_client import make_redis

    redis = make_redis(settings.redis_url, decode=True)
    keys = Keys(settings.key_prefix)
    try:
        if args.command == "erase-user":
            from chat.erasure import erase_user, mark_erased
            from chat.store import ChatStore
            from matcher.store import MatcherConfig, MatchStore

            # tombstone first, and every live session closed: nothing new is written while the data goes
            await mark_erased(redis, keys, args.user_id)
            # then out of matching (requests and offers withdrawn, unindexed): a survivor whose record
            # erasure deletes must not be left in the match indexes for the next talk-now to find
            await MatchStore(redis, keys, MatcherConfig()).forget(args.user_id)
            groups = _groups_for_erasure(redis, keys, settings)
            count = await erase_user(redis, keys, ChatStore(redis, keys), args.user_id, mark=False,
                                     on_group_left=groups.after_erasure)
            print(f"erased user {args.user_id}: {count} messages")
        elif args.command == "export-labels":
            from chat.labels import export_labels
            from chat.store import ChatStore

            try:
                count = await export_labels(redis, keys, ChatStore(redis, keys), sys.stdout, since=args.since)
            except ValueError as exc:          # a malformed --since
                print(f"aftertalk: {exc}", file=sys.stderr)
                return 2
            print(f"aftertalk: exported {count} reviewed flags", file=sys.stderr)
        elif args.command == "audit":
            from chat.audit import print_audit

            await print_audit(redis, keys, since=args.since, limit=args.limit)
    finally:
        await redis.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aftertalk", description="Aftertalk peer-support service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a gateway process")
    serve.add_argument("--host", default=None, help=f"bind address (env {ENV_NAMES['host']}, default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help=f"port (env {ENV_NAMES['port']}, default 8000)")
    serve.add_argument("--redis-url", default=None, help=f"Redis URL (env {ENV_NAMES['redis_url']}): "
                       "redis://host:port/0, redis+cluster://host:port[,host:port...] for Redis Cluster, or "
                       "redis+sentinel://host:port[,host:port...]/master-name[/db] for Sentinel; "
                       "without one an embedded redis-server is started")
    serve.add_argument("--data-dir", default=None, help=f"embedded Redis data (env {ENV_NAMES['data_dir']})")
    serve.add_argument("--demo", action="store_true", help="demo sign-in page; makes up a secret if none is set")
    serve.set_defaults(func=_serve)
    mod = sub.add_parser("moderate", help="run a screening worker (the learned model; any number may run)")
    mod.add_argument("--redis-url", default=None, help=f"Redis URL (env {ENV_NAMES['redis_url']})")
    mod.set_defaults(func=_moderate)
    token = sub.add_parser("token", help="print a signed token")
    token.add_argument("--role", required=True, choices=["patient", "survivor", "moderator"])
    token.add_argument("--sub", required=True)
    token.add_argument("--name", required=True)
    token.add_argument("--ttl", type=float, default=3600, help="seconds (default 3600)")
    token.set_defaults(func=_token)
    erase = sub.add_parser("erase-user", help="right to erasure: remove a user's profile and messages")
    erase.add_argument("user_id")
    erase.add_argument("--redis-url", default=None)
    erase.set_defaults(func=_store_command)
    labels = sub.add_parser("export-labels", help="reviewed flags (true/false alarms) as JSONL training rows")
    labels.add_argument("--since", default="", help="ISO time or epoch seconds (resolutions from then on)")
    labels.add_argument("--redis-url", default=None)
    labels.set_defaults(func=_store_command)
    audit = sub.add_parser("audit", help="print the moderation audit log")
    audit.add_argument("--since", default="", help="ISO time or epoch seconds")
    audit.add_argument("--limit", type=int, default=1000)
    audit.add_argument("--redis-url", default=None)
    audit.set_defaults(func=_store_command)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:           # a bad AFTERTALK_* value or flag: say which, and stop
        print(f"aftertalk: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
