"""Every setting of the service, read from the environment in this one place.

Each field names its environment variable (``ENV_NAMES``); ``aftertalk serve``
flags override the environment.  Nothing else in the code base reads
``os.environ``.  README.md's "Configuration" table documents every field.

Every value is checked, whether it comes from the environment, a flag or a
direct ``Settings(...)``: a value of the wrong kind or out of range raises
:class:`SettingsError`, which names the variable, the value and what is
allowed (all the bad ones at once); ``aftertalk`` prints it and exits with
status 2.  The signing secret is never shown, and a Redis URL's password is
masked.  An empty variable means "the default".
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MIN_SECRET = 32                                        # bytes of HMAC key
JWT_ALGORITHMS = ("HS256", "HS384", "HS512")           # a shared secret: HMAC only, never "none" or asymmetric
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")   # uvicorn's names
MIN_FRAME_BYTES = 8192                                 # a hello frame carries a token of up to 4096 characters
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
SHOWN_CHARS = 80                                       # longer values are cut in messages


@dataclass(frozen=True)
class Settings:
    """Service configuration.  ``ENV_NAMES`` maps each field to its variable; ``RULES`` says what each allows."""

    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = ""                      # empty: start an embedded redis-server
    data_dir: str = ".aftertalk-data"        # embedded Redis keeps its AOF here
    key_prefix: str = "at"
    secret: str = dataclasses.field(default="", repr=False)   # empty: not set (serve needs one unless --demo)
    demo: bool = False
    jwt_algorithms: tuple[str, ...] = ("HS256",)   # pinned; never taken from the token header
    jwt_audience: str = ""
    jwt_issuer: str = ""
    allowed_origins: tuple[str, ...] = ()    # empty: same host as the request only
    hello_timeout_s: float = 10.0
    token_refresh_ahead_s: float = 60.0      # token_expiring this long before exp (at most half the token's life)
    demo_token_ttl_s: float = 43200.0        # lifetime of the tokens POST /api/demo-token issues (demo mode)
    offer_timeout_s: float = 30.0
    grace_period_s: float = 60.0
    talk_now_rejoin_s: float = 5.0           # a talk-now this soon after the patient's match joins it
    catchup_concurrency: int = 32            # catch-ups from the log / re-syncs at once (gateway/hub.py)
    survivor_cooldown_s: float = 0.0
    survivor_daily_cap: int = 20
    max_chats_limit: int = 5
    max_groups_per_user: int = 5             # groups a user is in or waiting for at once (issue 12)
    max_text_chars: int = 4000
    max_frame_bytes: int = 65536
    send_rate_per_s: float = 5.0             # per user, token bucket
    send_burst: int = 20
    typing_interval_s: float = 2.0
    frames_per_s: float = 30.0               # any frame, per connection
    frames_burst: int = 60
    history_limit: int = 50
    outbox_limit: int = 256                  # frames buffered per slow connection before it is cut
    retention_days: float = 30.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    presence_ttl_s: float = 15.0
    drain_s: float = 10.0                    # on SIGTERM/SIGINT/SIGHUP: time to close every socket (1001)
    max_conns_per_user: int = 10
    max_conns_per_ip: int = 200
    offers_per_patient_hour: int = 30
    mask_contact_info: bool = True
    moderation: bool = True
    moderation_rules_path: str = ""
    crisis_lines: str = ""                   # JSON list of {"name","phone","url"?,"text"?}
    screening: bool = True                   # the learned model screens every message, off the relay path
    screening_workers: int = 1               # `aftertalk moderate` processes that `serve` starts beside itself
    screening_model_path: str = ""           # empty: the head shipped in the package
    screening_batch: int = 32                # messages scored together
    screening_claim_idle_s: float = 15.0     # a dead worker's messages are taken over after this long
    screening_behind_s: float = 30.0         # the moderators' feed says "screening is behind" past this age
    screen_crisis_threshold: float = 0.73    # operating points chosen on the dev split (docs/safety-eval.md)
    screen_review_threshold: float = 0.35
    screen_abuse_threshold: float = 0.265
    screen_medical_threshold: float = 0.455
    log_level: str = "info"

    def __post_init__(self) -> None:
        problems = [p for f in dataclasses.fields(self)
                    if (p := _check(f.name, getattr(self, f.name), ENV_NAMES[f.name], None)) is not None]
        if self.screen_review_threshold > self.screen_crisis_threshold:
            problems.append(f"{ENV_NAMES['screen_review_threshold']}={self.screen_review_threshold!r} is not allowed: "
                            f"the uncertain band must start at or below {ENV_NAMES['screen_crisis_threshold']} "
                            f"({self.screen_crisis_threshold!r})")
        if problems:
            raise SettingsError(problems)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """The settings from ``environ`` (default ``os.environ``), then ``overrides`` that are not None
        (the ``serve`` flags).  Raises :class:`SettingsError` listing every invalid value."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        shown: dict[str, tuple[str, str | None]] = {}          # field -> (name in messages, raw text)
        problems: list[str] = []
        for f in dataclasses.fields(cls):
            var = ENV_NAMES[f.name]
            raw = environ.get(var)
            if raw is None or not raw.strip():
                continue
            try:
                values[f.name] = RULES[f.name].parse(raw)
            except ValueError as exc:
                problems.append(_message(f.name, var, raw, str(exc)))
                continue
            shown[f.name] = (var, raw)
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in ENV_NAMES:
                raise TypeError(f"Settings has no field {name!r}")
            values[name] = value
            shown[name] = ("--" + name.replace("_", "-"), None)
        for name, value in values.items():
            label, raw = shown[name]
            problem = _check(name, value, label, raw)
            if problem is not None:
                problems.append(problem)
        if problems:
            raise SettingsError(problems)
        return cls(**values)


class SettingsError(ValueError):
    """One or more settings are invalid; ``problems`` has one line each, naming the variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        if len(problems) == 1:
            text = problems[0]
        else:
            text = f"{len(problems)} settings are invalid:\n" + "\n".join(f"  {p}" for p in problems)
        super().__init__(text)


ENV_NAMES: dict[str, str] = {
    f.name: "AFTERTALK_" + f.name.upper() for f in dataclasses.fields(Settings)
}


# ---- what each field allows -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """How a field is read from its variable's text (``parse``, which raises ValueError saying what is
    expected) and what a value must satisfy (``check``: None, or what is expected).  ``hide`` turns a
    value into the text a message may show."""

    parse: Callable[[str], Any]
    check: Callable[[Any], str | None]
    hide: Callable[[str], str] | None = None


def _text(raw: str) -> str:
    return raw.strip()


def _any(value: Any) -> str | None:
    return None if isinstance(value, str) else "expected text"


def _boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(_BOOL_EXPECTED)


_BOOL_EXPECTED = f"expected a boolean: {', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)}"


def _is_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else _BOOL_EXPECTED


def _whole(low: int, high: int | None = None, unit: str = "") -> Rule:
    expected = f"expected a whole number{unit} from {low} to {high}" if high is not None \
        else f"expected a whole number{unit} of at least {low}"

    def parse(raw: str) -> int:
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError(expected) from None

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return expected
        return expected if value < low or (high is not None and value > high) else None

    return Rule(parse, check)


def _number(low: float, *, above: bool, unit: str = "") -> Rule:
    """A finite number ``> low`` (``above``) or ``>= low``."""
    expected = f"expected a number{unit} {'greater than' if above else 'of at least'} {low:g}"

    def parse(raw: str) -> float:
        try:
            return float(raw.strip())
        except ValueError:
            raise ValueError(expected) from None

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return expected
        return expected if (value <= low if above else value < low) else None

    return Rule(parse, check)


def _secret_check(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be text"
    size = len(value.encode())
    if value and size < MIN_SECRET:
        return f"must be at least {MIN_SECRET} bytes; it is {size} bytes"
    return None


def _hide_all(raw: str) -> str:
    return ""


_HOST = re.compile(r"^[^\s/?#@]+$")


def _host_check(value: Any) -> str | None:
    ok = isinstance(value, str) and _HOST.match(value) is not None
    return None if ok else "expected a host name or IP address (no spaces, no scheme)"


_PREFIX = re.compile(r"^[!-~]{1,64}$")      # printable ASCII, no space


def _prefix_check(value: Any) -> str | None:
    ok = isinstance(value, str) and _PREFIX.match(value) is not None and "{" not in value and "}" not in value
    return None if ok else ("expected 1 to 64 printable ASCII characters without spaces or braces "
                            "(braces would change the Redis Cluster hash tags)")


def _comma_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _algorithms_check(value: Any) -> str | None:
    expected = f"expected one or more of {', '.join(JWT_ALGORITHMS)}, comma-separated"
    if not isinstance(value, tuple) or not value:
        return expected
    bad = [a for a in value if a not in JWT_ALGORITHMS]
    return f"{', '.join(map(repr, bad))} not allowed; {expected}" if bad else None


def _origin_problem(origin: str) -> str | None:
    if origin == "*":
        return None
    try:
        parts = urlsplit(origin)
        port = parts.port                         # raises ValueError when not a number 0-65535
    except ValueError:
        return f"{origin!r} has a bad port"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"{origin!r} is not scheme://host[:port] with scheme https or http"
    if parts.path or parts.query or parts.fragment or parts.username is not None or port == 0 \
            or parts.netloc.endswith(":"):
        return f"{origin!r} is not just scheme://host[:port] (no path, not even '/')"
    if origin != origin.lower():
        return f"{origin!r} has capitals; browsers send the Origin in lower case"
    return None


def _origins_check(value: Any) -> str | None:
    expected = "expected comma-separated origins such as https://app.example.org, or *"
    if not isinstance(value, tuple):
        return expected
    for origin in value:
        problem = _origin_problem(origin) if isinstance(origin, str) else "not text"
        if problem:
            return f"{problem}; {expected}"
    return None


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")


def _redis_url_check(value: Any) -> str | None:
    if not isinstance(value, str):
        return "expected text"
    if not value:
        return None                               # empty: an embedded redis-server is started
    from core.redis_client import is_cluster_url, is_sentinel_url, parse_cluster_url, parse_sentinel_url

    expected = ("expected redis://host:port[/db], rediss://..., unix://path, redis+cluster://host:port[,host:port...], "
                "or redis+sentinel://host:port[,host:port...]/<master-name>[/db]")
    scheme = value.partition("://")[0].lower()
    if scheme not in REDIS_SCHEMES or "://" not in value:
        return expected
    try:
        if is_cluster_url(value):
            parse_cluster_url(value)
        elif is_sentinel_url(value):
            parse_sentinel_url(value)
        else:
            parts = urlsplit(value)
            _ = parts.port                        # raises ValueError when not a number 0-65535
            if scheme != "unix" and not parts.hostname:
                return f"no host; {expected}"
            if scheme == "unix" and not parts.path:
                return f"no socket path; {expected}"
    except ValueError as exc:
        return f"{exc}; {expected}"
    return None


def _hide_password(raw: str) -> str:
    """The URL with any password (also a Sentinel URL's ``sentinel_password=``) replaced by ``***``."""
    raw = re.sub(r"([?&]sentinel_password=)[^&#]*", r"\1***", raw)
    return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", raw)


def _rules_path_check(value: Any) -> str | None:
    if not isinstance(value, str):
        return "expected text"
    if value and not os.path.isfile(value):
        return "no such file; expected the path of a JSON rules file, or empty for the packaged rules only"
    return None


def _crisis_lines_check(value: Any) -> str | None:
    if not isinstance(value, str):
        return "expected text"
    from chat.crisis import parse_crisis_lines

    try:
        parse_crisis_lines(value)
    except ValueError as exc:
        return f"{exc} (see docs/moderation.md)"
    return None


def _log_level(raw: str) -> str:
    return raw.strip().lower()


def _log_level_check(value: Any) -> str | None:
    return None if value in LOG_LEVELS else f"expected one of {', '.join(LOG_LEVELS)}"


def _probability(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError(_PROBABILITY_EXPECTED) from None


_PROBABILITY_EXPECTED = "expected a probability greater than 0 and at most 1"


def _probability_check(value: Any) -> str | None:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and 0 < value <= 1
    return None if ok else _PROBABILITY_EXPECTED


def _model_path_check(value: Any) -> str | None:
    if not isinstance(value, str):
        return "expected text"
    if value and not os.path.isfile(value):
        return "no such file; expected the path of a trained head (.npz), or empty for the packaged one"
    return None


_PROBABILITY = Rule(_probability, _probability_check)
_SECONDS_ABOVE_0 = _number(0, above=True, unit=" of seconds")
_SECONDS_AT_LEAST_0 = _number(0, above=False, unit=" of seconds")
_BOOL = Rule(_boolean, _is_bool)
_TEXT = Rule(_text, _any)

RULES: dict[str, Rule] = {
    "host": Rule(_text, _host_check),
    "port": _whole(1, 65535),
    "redis_url": Rule(_text, _redis_url_check, hide=_hide_password),
    "data_dir": _TEXT,
    "key_prefix": Rule(_text, _prefix_check),
    "secret": Rule(lambda raw: raw, _secret_check, hide=_hide_all),
    "demo": _BOOL,
    "jwt_algorithms": Rule(_comma_list, _algorithms_check),
    "jwt_audience": _TEXT,
    "jwt_issuer": _TEXT,
    "allowed_origins": Rule(_comma_list, _origins_check),
    "hello_timeout_s": _SECONDS_ABOVE_0,
    "token_refresh_ahead_s": _SECONDS_ABOVE_0,
    "demo_token_ttl_s": _SECONDS_ABOVE_0,
    "offer_timeout_s": _SECONDS_ABOVE_0,
    "grace_period_s": _SECONDS_AT_LEAST_0,
    "talk_now_rejoin_s": _SECONDS_AT_LEAST_0,
    "catchup_concurrency": _whole(1),
    "survivor_cooldown_s": _SECONDS_AT_LEAST_0,
    "survivor_daily_cap": _whole(1),
    "max_chats_limit": _whole(1),
    "max_groups_per_user": _whole(1),
    "max_text_chars": _whole(1),
    "max_frame_bytes": _whole(MIN_FRAME_BYTES, unit=" of bytes"),
    "send_rate_per_s": _number(0, above=True),
    "send_burst": _whole(1),
    "typing_interval_s": _SECONDS_AT_LEAST_0,
    "frames_per_s": _number(0, above=True),
    "frames_burst": _whole(1),
    "history_limit": _whole(1),
    "outbox_limit": _whole(1),
    "retention_days": _number(0, above=True, unit=" of days"),
    "ping_interval_s": _SECONDS_ABOVE_0,
    "ping_timeout_s": _SECONDS_ABOVE_0,
    "presence_ttl_s": _SECONDS_ABOVE_0,
    "drain_s": _SECONDS_ABOVE_0,
    "max_conns_per_user": _whole(1),
    "max_conns_per_ip": _whole(1),
    "offers_per_patient_hour": _whole(1),
    "mask_contact_info": _BOOL,
    "moderation": _BOOL,
    "moderation_rules_path": Rule(_text, _rules_path_check),
    "crisis_lines": Rule(lambda raw: raw, _crisis_lines_check),
    "log_level": Rule(_log_level, _log_level_check),
    "screening": _BOOL,
    "screening_workers": _whole(0, 64),
    "screening_model_path": Rule(_text, _model_path_check),
    "screening_batch": _whole(1, 1024),
    "screening_claim_idle_s": _SECONDS_ABOVE_0,
    "screening_behind_s": _SECONDS_ABOVE_0,
    "screen_crisis_threshold": _PROBABILITY,
    "screen_review_threshold": _PROBABILITY,
    "screen_abuse_threshold": _PROBABILITY,
    "screen_medical_threshold": _PROBABILITY,
}
assert RULES.keys() == ENV_NAMES.keys(), "every setting needs a rule"


def _check(name: str, value: Any, label: str, raw: str | None) -> str | None:
    """The message for ``value`` of field ``name`` if it is not allowed, else None."""
    problem = RULES[name].check(value)
    if problem is None:
        return None
    return _message(name, label, raw if raw is not None else _as_text(value), problem)


def _as_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _message(name: str, label: str, raw: str, problem: str) -> str:
    hide = RULES[name].hide
    if hide is _hide_all:
        return f"{label} {problem} (the value is not shown)"
    shown = hide(raw) if hide else raw
    if len(shown) > SHOWN_CHARS:
        shown = shown[:SHOWN_CHARS] + "..."
    return f"{label}={shown!r} is not allowed: {problem}"
