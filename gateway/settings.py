"""Every setting of the service, read from the environment in this one place.

Each field names its environment variable; ``aftertalk serve`` flags override
the environment.  Nothing else in the code base reads ``os.environ``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping


def _env(name: str, default: Any, cast: type, environ: Mapping[str, str]) -> Any:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    if cast is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if cast is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return cast(raw)


@dataclass(frozen=True)
class Settings:
    """Service configuration.  ``ENV_NAMES`` maps each field to its variable."""

    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str = ""                      # empty: start an embedded redis-server
    data_dir: str = ".aftertalk-data"        # embedded Redis keeps its AOF here
    key_prefix: str = "at"
    secret: str = ""
    demo: bool = False
    jwt_algorithms: tuple = ("HS256",)       # pinned; never taken from the token header
    jwt_audience: str = ""
    jwt_issuer: str = ""
    allowed_origins: tuple = ()              # empty: same host as the request only
    hello_timeout_s: float = 10.0
    offer_timeout_s: float = 30.0
    grace_period_s: float = 60.0
    survivor_cooldown_s: float = 0.0
    survivor_daily_cap: int = 20
    max_chats_limit: int = 5
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
    max_conns_per_user: int = 10
    max_conns_per_ip: int = 200
    offers_per_patient_hour: int = 30
    mask_contact_info: bool = True
    moderation: bool = True
    moderation_rules_path: str = ""
    crisis_lines: str = ""                   # JSON list of {"name","phone","url"?,"text"?}
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            var = ENV_NAMES.get(f.name)
            if var is None:
                continue
            cast = type(f.default) if f.default is not None else str
            values[f.name] = _env(var, f.default, cast, environ)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


ENV_NAMES: dict[str, str] = {
    f.name: "AFTERTALK_" + f.name.upper() for f in dataclasses.fields(Settings)
}
