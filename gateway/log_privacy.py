"""Log privacy: no message text and no token may reach a log line, at any log level.

Our own log calls name frame types and counts, never contents.  Two leaks come from below:

* At info level uvicorn logs each WebSocket handshake with the request's query string.
* With debug logging, the websockets protocol engine (uvicorn hands it the ``uvicorn.error``
  logger) logs every frame it receives or sends and every handshake header: a ``hello`` frame
  carries a token, a ``send`` or ``message`` frame a person's words, a header a cookie.
* uvicorn logs a text frame that is not valid UTF-8 as an exception with a traceback, as if it
  were a bug of ours; it is the client's fault, already answered with close code 1007.

:func:`install` runs after uvicorn has configured logging.  It drops websockets' DEBUG records,
demotes the invalid UTF-8 record to a one-line warning, and, as a last line of defence on every
handler, masks anything shaped like a JWT in any record (a token in a URL, an exception message).
"""
from __future__ import annotations

import logging
import re

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
MASK = "[token]"
INVALID_UTF8 = "Invalid UTF-8 sequence received from client."
HANDSHAKE = '%s - "WebSocket %s"'         # uvicorn's handshake lines: client address, path with query
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "aftertalk")


class WebSocketFrameFilter(logging.Filter):
    """On ``uvicorn.error``: no frame/header dumps from websockets, no query strings in handshake
    lines (``"WebSocket /ws?..." [accepted]``), no traceback for bad UTF-8."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG and "websockets" in record.pathname.replace("\\", "/").split("/"):
            return False
        if isinstance(record.msg, str) and record.msg.startswith(HANDSHAKE) and isinstance(record.args, tuple) \
                and len(record.args) >= 2 and isinstance(record.args[1], str):
            record.args = (record.args[0], record.args[1].split("?", 1)[0], *record.args[2:])
        if record.msg == INVALID_UTF8 and record.exc_info:
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "a client sent a text frame that is not valid UTF-8; closed with 1007"
        return True


class TokenMaskFilter(logging.Filter):
    """On handlers: replace JWT-shaped strings in the message and the traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "eyJ" in message:
            record.msg, record.args = JWT.sub(MASK, message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and "eyJ" in record.exc_text:
            record.exc_text = JWT.sub(MASK, record.exc_text)
        return True


def install() -> None:
    """Attach the filters (idempotent).  Call after uvicorn has configured its loggers."""
    frames = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, WebSocketFrameFilter) for f in frames.filters):
        frames.addFilter(WebSocketFrameFilter())
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, TokenMaskFilter) for f in handler.filters):
                handler.addFilter(TokenMaskFilter())
