"""Signed identity tokens (JWT).  Pure: no I/O.

The accepted algorithms come from configuration and are passed to PyJWT
explicitly, so a token's own header can never choose ``none`` or an
asymmetric algorithm.  ``exp``, ``sub``, ``role`` and ``name`` are required; ``facilitator: true`` marks a survivor
who may create and lead groups (ignored for other roles);
``aud`` and ``iss`` are checked when configured.  ``iat`` (issued at) is optional but
:func:`issue_token` always sets it: after an erasure only a token issued later opens a
session for that user (a token without ``iat`` counts as older than any erasure).  The ``name`` is cleaned
(:func:`display_name`) before anyone sees it.

The small clock-skew ``leeway_s`` applies to checking a token; a WebSocket session still ends at the
token's own ``exp`` (a token already past it is refused at ``hello``; see :mod:`gateway.expiry`).
"""
from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jwt

from chat.crisis import normalise_locale
from chat.textnorm import is_blank, is_invisible
from core.errors import Unauthorized

if TYPE_CHECKING:
    from jwt.types import Options  # PyJWT's TypedDict of decode options (typing only)

ROLES = frozenset({"patient", "survivor", "moderator"})
MAX_NAME = 40


@dataclass(frozen=True, slots=True)
class Identity:
    id: str
    role: str
    name: str
    exp: float
    iat: float | None = None     # when the token was issued (None: no ``iat``, treated as older than any erasure)
    locale: str = ""             # "es-MX": the token's ``locale`` claim or the hello's; picks the crisis lines
    facilitator: bool = False    # a survivor trusted to create and lead groups (the ``facilitator`` claim)

    def public(self) -> dict[str, str | bool]:
        out: dict[str, str | bool] = {"id": self.id, "role": self.role, "name": self.name}
        if self.facilitator:
            out["facilitator"] = True
        return out


def display_name(raw: str) -> str:
    """A name as peers are shown it: without format characters (Unicode category Cf: bidi
    overrides, embeddings and isolates, zero-width spaces and joiners, soft hyphens, ...) or other
    invisible characters, so that no name can reorder the text around it or pass for another
    name, trimmed and cut to :data:`MAX_NAME`.  ``""`` when nothing visible is left (see
    :func:`chat.textnorm.is_blank`): the caller falls back as for an empty name."""
    if not raw.isascii():
        raw = "".join(ch for ch in raw if unicodedata.category(ch) != "Cf" and not is_invisible(ch))
    name = raw.strip()[:MAX_NAME].strip()
    return "" if is_blank(name) else name


def issue_token(secret: str, *, sub: str, role: str, name: str, ttl_s: float = 3600,
                audience: str = "", issuer: str = "", algorithm: str = "HS256", now: float | None = None,
                locale: str = "", facilitator: bool = False) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    now = time.time() if now is None else now
    claims: dict[str, object] = {"sub": sub, "role": role, "name": name, "iat": int(now), "exp": int(now + ttl_s)}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    if locale:
        claims["locale"] = locale
    if facilitator:
        claims["facilitator"] = True
    return jwt.encode(claims, secret, algorithm=algorithm)


def verify_token(token: object, secret: str, *, algorithms: tuple[str, ...] = ("HS256",),
                 audience: str = "", issuer: str = "", leeway_s: float = 5.0) -> Identity:
    """Return the identity in a valid token or raise :class:`Unauthorized` with a reason."""
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise Unauthorized("missing or malformed token")
    options: Options = {"require": ["exp", "sub", "role", "name"], "verify_aud": bool(audience)}
    try:
        claims = jwt.decode(token, secret, algorithms=list(algorithms), audience=audience or None,
                            issuer=issuer or None, options=options, leeway=leeway_s)
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.ImmatureSignatureError:
        raise Unauthorized("token not yet valid") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {type(exc).__name__}") from None
    sub, role, name = claims.get("sub"), claims.get("role"), claims.get("name")
    if not isinstance(sub, str) or not sub or len(sub) > 128 or "|" in sub:
        raise Unauthorized("invalid token: bad subject")
    if not isinstance(role, str) or role not in ROLES:
        raise Unauthorized("invalid token: unknown role")
    shown = display_name(name) if isinstance(name, str) else ""
    if not shown:
        raise Unauthorized("invalid token: bad name")
    iat = claims.get("iat")
    issued = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None
    # only a survivor can be a facilitator; the claim must be exactly true
    facilitator = role == "survivor" and claims.get("facilitator") is True
    return Identity(id=sub, role=role, name=shown, exp=float(claims["exp"]), iat=issued,
                    locale=normalise_locale(claims.get("locale")), facilitator=facilitator)
