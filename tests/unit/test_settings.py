"""Settings refuse bad values, naming the variable, the value and what is allowed (gateway/settings.py)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway.settings import ENV_NAMES, JWT_ALGORITHMS, LOG_LEVELS, RULES, Settings, SettingsError

README = Path(__file__).resolve().parents[2] / "README.md"


def refused(**env: str) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    return info.value


def test_defaults_are_valid_and_match_the_documented_ones():
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.port, s.log_level, s.jwt_algorithms, s.demo, s.moderation) == (8000, "info", ("HS256",), False, True)


def test_good_values_are_read():
    s = Settings.from_env({
        "AFTERTALK_PORT": "9000", "AFTERTALK_DEMO": "Yes", "AFTERTALK_MODERATION": "off",
        "AFTERTALK_MASK_CONTACT_INFO": "0", "AFTERTALK_RETENTION_DAYS": "0.00002",
        "AFTERTALK_SURVIVOR_COOLDOWN_S": "0", "AFTERTALK_LOG_LEVEL": "DEBUG",
        "AFTERTALK_ALLOWED_ORIGINS": "https://app.example, http://localhost:8000,https://[::1]:8443",
        "AFTERTALK_JWT_ALGORITHMS": "HS256,HS512", "AFTERTALK_SECRET": "s" * 32,
        "AFTERTALK_REDIS_URL": "redis+cluster://u:p@10.0.0.1:6379,10.0.0.2:6379",
        "AFTERTALK_CRISIS_LINES": '[{"name": "Line", "phone": "116 123"}]',
    })
    assert (s.port, s.demo, s.moderation, s.mask_contact_info) == (9000, True, False, False)
    assert (s.retention_days, s.survivor_cooldown_s, s.log_level) == (0.00002, 0.0, "debug")
    assert s.allowed_origins == ("https://app.example", "http://localhost:8000", "https://[::1]:8443")
    assert s.jwt_algorithms == ("HS256", "HS512")


def test_an_empty_variable_means_the_default():
    assert Settings.from_env({"AFTERTALK_PORT": "", "AFTERTALK_DEMO": "  "}) == Settings()


def test_flags_override_the_environment_and_none_means_not_given():
    s = Settings.from_env({"AFTERTALK_PORT": "9000", "AFTERTALK_HOST": "0.0.0.0"}, port=9100, host=None)
    assert (s.port, s.host) == (9100, "0.0.0.0")


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "ja", "-1"])
def test_an_unrecognised_boolean_is_refused_not_read_as_false(raw):
    err = refused(AFTERTALK_DEMO=raw)
    assert str(err) == (f"AFTERTALK_DEMO={raw!r} is not allowed: expected a boolean: "
                        "1, true, yes, on or 0, false, no, off")


@pytest.mark.parametrize("var, raw", [
    ("AFTERTALK_PORT", "eighty"), ("AFTERTALK_PORT", "80.5"), ("AFTERTALK_SEND_BURST", "1e3"),
    ("AFTERTALK_OFFER_TIMEOUT_S", "soon"), ("AFTERTALK_RETENTION_DAYS", "30d"),
    ("AFTERTALK_PING_INTERVAL_S", "nan"), ("AFTERTALK_PING_TIMEOUT_S", "inf"),
])
def test_a_non_number_is_refused(var, raw):
    err = refused(**{var: raw})
    assert str(err).startswith(f"{var}={raw!r} is not allowed: expected a")
    assert "number" in str(err)


@pytest.mark.parametrize("var, raw, allowed", [
    ("AFTERTALK_PORT", "0", "from 1 to 65535"),
    ("AFTERTALK_PORT", "65536", "from 1 to 65535"),
    ("AFTERTALK_PORT", "-80", "from 1 to 65535"),
    ("AFTERTALK_HELLO_TIMEOUT_S", "-1", "greater than 0"),
    ("AFTERTALK_HELLO_TIMEOUT_S", "0", "greater than 0"),
    ("AFTERTALK_OFFER_TIMEOUT_S", "-0.5", "greater than 0"),
    ("AFTERTALK_GRACE_PERIOD_S", "-1", "of at least 0"),
    ("AFTERTALK_SURVIVOR_COOLDOWN_S", "-3", "of at least 0"),
    ("AFTERTALK_PRESENCE_TTL_S", "0", "greater than 0"),
    ("AFTERTALK_SURVIVOR_DAILY_CAP", "0", "of at least 1"),
    ("AFTERTALK_MAX_CONNS_PER_IP", "0", "of at least 1"),
    ("AFTERTALK_FRAMES_PER_S", "0", "greater than 0"),
    ("AFTERTALK_MAX_FRAME_BYTES", "100", "of at least 8192"),
    ("AFTERTALK_RETENTION_DAYS", "0", "greater than 0"),
])
def test_a_number_out_of_range_is_refused(var, raw, allowed):
    err = refused(**{var: raw})
    assert str(err).startswith(f"{var}={raw!r} is not allowed: expected ")
    assert allowed in str(err)


@pytest.mark.parametrize("size", [1, 12, 31])
def test_a_short_secret_is_refused_without_being_shown(size):
    secret = "Q" * size
    err = refused(AFTERTALK_SECRET=secret)
    assert str(err) == (f"AFTERTALK_SECRET must be at least 32 bytes; it is {size} bytes "
                        "(the value is not shown)")
    assert secret not in str(err)


def test_the_secret_is_counted_in_bytes_and_never_in_the_repr():
    assert Settings.from_env({"AFTERTALK_SECRET": "é" * 16}).secret == "é" * 16      # 32 bytes
    refused(AFTERTALK_SECRET="é" * 15)
    s = Settings(secret="k" * 40)
    assert "k" * 40 not in repr(s)


def test_unknown_log_level_is_refused():
    err = refused(AFTERTALK_LOG_LEVEL="verbose")
    assert str(err) == f"AFTERTALK_LOG_LEVEL='verbose' is not allowed: expected one of {', '.join(LOG_LEVELS)}"


@pytest.mark.parametrize("raw", [
    "https://app.example/",                 # a path: never equal to an Origin header
    "app.example",                          # no scheme
    "ftp://app.example",
    "https://app.example:99999",
    "https://app.example:port",
    "https://App.Example",                  # browsers send lower case
    "https://app.example, https://ok.example/path",
    "https://user@app.example",
    "https://",
])
def test_a_malformed_origin_list_is_refused(raw):
    err = refused(AFTERTALK_ALLOWED_ORIGINS=raw)
    assert str(err).startswith(f"AFTERTALK_ALLOWED_ORIGINS={raw!r} is not allowed: ")
    assert "expected comma-separated origins such as https://app.example.org, or *" in str(err)


def test_star_is_an_allowed_origin():
    assert Settings.from_env({"AFTERTALK_ALLOWED_ORIGINS": "*"}).allowed_origins == ("*",)


@pytest.mark.parametrize("raw", ["none", "RS256", "HS256,ES256", "hs256", ","])
def test_jwt_algorithms_outside_the_allowed_set_are_refused(raw):
    err = refused(AFTERTALK_JWT_ALGORITHMS=raw)
    assert str(err).startswith(f"AFTERTALK_JWT_ALGORITHMS={raw!r} is not allowed: ")
    assert f"expected one or more of {', '.join(JWT_ALGORITHMS)}" in str(err)


def test_a_bad_redis_url_is_refused_with_its_password_masked():
    err = refused(AFTERTALK_REDIS_URL="redis://app:hunter2@db.example:70000/0")
    assert "AFTERTALK_REDIS_URL='redis://app:***@db.example:70000/0' is not allowed" in str(err)
    assert "hunter2" not in str(err)
    assert "AFTERTALK_REDIS_URL='http://db.example' is not allowed" in str(refused(AFTERTALK_REDIS_URL="http://db.example"))
    assert "is not allowed" in str(refused(AFTERTALK_REDIS_URL="redis+cluster://"))
    for good in ("redis://127.0.0.1:6379/0", "rediss://:pw@host", "unix:///run/redis.sock",
                 "rediss+cluster://a:1,b:2"):
        assert Settings.from_env({"AFTERTALK_REDIS_URL": good}).redis_url == good


def test_other_text_settings_are_checked():
    assert "AFTERTALK_KEY_PREFIX='at{x}'" in str(refused(AFTERTALK_KEY_PREFIX="at{x}"))
    assert "AFTERTALK_KEY_PREFIX='a b'" in str(refused(AFTERTALK_KEY_PREFIX="a b"))
    assert "AFTERTALK_HOST='http://x'" in str(refused(AFTERTALK_HOST="http://x"))
    err = refused(AFTERTALK_CRISIS_LINES='[{"name": "only a name"}]')
    assert "AFTERTALK_CRISIS_LINES=" in str(err) and "give at least one of 'phone', 'url' or 'text'" in str(err)
    err = refused(AFTERTALK_MODERATION_RULES_PATH="/no/such/rules.json")
    assert "AFTERTALK_MODERATION_RULES_PATH='/no/such/rules.json' is not allowed: no such file" in str(err)


def test_long_values_are_cut_in_the_message():
    err = refused(AFTERTALK_CRISIS_LINES="[" + "x" * 500)
    assert len(str(err)) < 300 and "..." in str(err)


def test_every_bad_value_is_reported_at_once():
    err = refused(AFTERTALK_DEMO="maybe", AFTERTALK_PORT="0", AFTERTALK_SECRET="short", AFTERTALK_HOST="0.0.0.0")
    assert len(err.problems) == 3
    assert str(err).startswith("3 settings are invalid:\n")
    for var in ("AFTERTALK_DEMO", "AFTERTALK_PORT", "AFTERTALK_SECRET"):
        assert var in str(err)


def test_a_bad_flag_is_named_as_the_flag():
    with pytest.raises(SettingsError, match=r"^--port='0' is not allowed: expected a whole number from 1 to 65535$"):
        Settings.from_env({}, port=0)


def test_direct_construction_is_checked_too():
    with pytest.raises(SettingsError, match="AFTERTALK_PING_TIMEOUT_S='-1' is not allowed"):
        Settings(ping_timeout_s=-1)
    with pytest.raises(SettingsError, match="AFTERTALK_DEMO='yes' is not allowed"):
        Settings(demo="yes")                    # the wrong type, on purpose
    with pytest.raises(SettingsError, match="AFTERTALK_PORT='True' is not allowed"):
        Settings(port=True)


def test_every_field_has_a_variable_and_a_rule():
    names = [f.name for f in dataclasses.fields(Settings)]
    assert list(ENV_NAMES) == names and set(RULES) == set(names)


def test_the_readme_configuration_table_lists_every_variable_and_no_other():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(AFTERTALK_[A-Z_]+)`", section))
    assert documented == set(ENV_NAMES.values())
