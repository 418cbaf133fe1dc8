"""Identity tokens (gateway/auth.py): what is accepted and every way a token is refused."""
from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from core.errors import Unauthorized
from gateway.auth import MAX_NAME, Identity, display_name, issue_token, verify_token

SECRET = "s" * 64     # long enough for HS512 without warnings
OTHER = "o" * 64


def claims(**over) -> dict:
    now = int(time.time())
    base = {"sub": "u1", "role": "patient", "name": "Pat", "iat": now, "exp": now + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def signed(secret: str = SECRET, algorithm: str = "HS256", **over) -> str:
    return jwt.encode(claims(**over), secret, algorithm=algorithm)


def refused(token, **kw) -> str:
    with pytest.raises(Unauthorized) as info:
        verify_token(token, kw.pop("secret", SECRET), **kw)
    assert info.value.reason
    return info.value.reason


def b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


# ---------------------------------------------------------------- accepted

@pytest.mark.parametrize("role", ["patient", "survivor", "moderator"])
def test_issued_token_round_trips(role):
    tok = issue_token(SECRET, sub="abc", role=role, name="Sam", ttl_s=60)
    ident = verify_token(tok, SECRET)
    assert ident.public() == {"id": "abc", "role": role, "name": "Sam"}
    assert time.time() < ident.exp <= time.time() + 61


def test_name_is_trimmed_and_bounded():
    ident = verify_token(signed(name="  " + "N" * 100 + " "), SECRET)
    assert ident.name == "N" * MAX_NAME


@pytest.mark.parametrize(("raw", "shown"), [
    ("\u202eretarednoM", "retarednoM"), ("Sa\u200bm", "Sam"), ("\u2067Sam\u2069", "Sam"), ("Pa\u00adt", "Pat"),
    (" \ufeffAna\u200d ", "Ana"), ("Zoë", "Zoë"), ("שרה", "שרה"), ("Ana\u2800", "Ana\u2800"),
    ("\u200b" * 50 + "Ana", "Ana"), ("\u202e" + "N" * 100, "N" * MAX_NAME),
])
def test_format_characters_are_stripped_from_names(raw, shown):
    assert display_name(raw) == shown
    assert verify_token(signed(name=raw), SECRET).name == shown


@pytest.mark.parametrize("raw", ["", "   ", "\u200b\u200b", "\u202e", "\u3164", "\u2800", " \u2066\u200d\u2069 \u2800"])
def test_a_name_with_nothing_visible_is_refused_like_an_empty_one(raw):
    assert display_name(raw) == ""
    assert refused(signed(name=raw)) == "invalid token: bad name"


def test_issue_token_refuses_unknown_roles():
    with pytest.raises(ValueError):
        issue_token(SECRET, sub="u", role="admin", name="x")


def test_small_clock_skew_is_tolerated():
    assert isinstance(verify_token(signed(exp=int(time.time()) - 2), SECRET), Identity)


# ---------------------------------------------------------------- refused

def test_expired():
    assert refused(signed(exp=int(time.time()) - 60)) == "token expired"


def test_issued_token_with_negative_ttl_is_expired():
    assert refused(issue_token(SECRET, sub="u", role="patient", name="x", ttl_s=-60)) == "token expired"


def test_not_before_in_the_future():
    assert refused(signed(nbf=int(time.time()) + 120)) == "token not yet valid"


def test_wrong_signature():
    assert "invalid token" in refused(signed(secret=OTHER))


def test_tampered_payload_fails_signature():
    head, _, sig = signed().split(".")
    forged = ".".join([head, b64(claims(role="moderator")), sig])
    assert "invalid token" in refused(forged)


def test_alg_none_is_refused():
    unsigned = ".".join([b64({"alg": "none", "typ": "JWT"}), b64(claims()), ""])
    assert "invalid token" in refused(unsigned)
    assert "invalid token" in refused(jwt.encode(claims(), None, algorithm="none"))


def test_other_hmac_algorithm_is_refused_when_hs256_is_pinned():
    assert "invalid token" in refused(signed(algorithm="HS512"))
    assert "invalid token" in refused(signed(algorithm="HS384"))


def test_pinned_algorithm_list_is_what_counts():
    tok = signed(algorithm="HS512")
    assert verify_token(tok, SECRET, algorithms=("HS512",)).id == "u1"
    assert "invalid token" in refused(signed(), algorithms=("HS512",))


@pytest.mark.parametrize("missing", ["exp", "sub", "role", "name"])
def test_required_claims(missing):
    assert "invalid token" in refused(signed(**{missing: None}))


@pytest.mark.parametrize("role", ["admin", "Patient", "", None, 1, ["patient"]])
def test_unknown_role(role):
    tok = jwt.encode({**claims(), "role": role}, SECRET, algorithm="HS256")
    assert "invalid token" in refused(tok)


@pytest.mark.parametrize("sub", ["", "a|b", "x" * 129])
def test_bad_subject(sub):
    assert refused(jwt.encode({**claims(), "sub": sub}, SECRET, algorithm="HS256")).startswith("invalid token")


@pytest.mark.parametrize("name", ["", "   ", 5, None])
def test_bad_name(name):
    assert refused(jwt.encode({**claims(), "name": name}, SECRET, algorithm="HS256")).startswith("invalid token")


@pytest.mark.parametrize("token", [None, "", 42, b"bytes", {"t": 1}, "x" * 5000, "not.a.jwt", "abc"])
def test_malformed_tokens(token):
    refused(token)


# ---------------------------------------------------------------- audience and issuer

def test_audience_checked_when_configured():
    good = issue_token(SECRET, sub="u", role="patient", name="x", audience="aftertalk")
    assert verify_token(good, SECRET, audience="aftertalk").id == "u"
    assert "invalid token" in refused(issue_token(SECRET, sub="u", role="patient", name="x", audience="other"),
                                      audience="aftertalk")
    assert "invalid token" in refused(signed(), audience="aftertalk")           # no aud at all


def test_audience_in_token_is_ignored_when_not_configured():
    tok = issue_token(SECRET, sub="u", role="patient", name="x", audience="whatever")
    assert verify_token(tok, SECRET).id == "u"


def test_issuer_checked_when_configured():
    good = issue_token(SECRET, sub="u", role="patient", name="x", issuer="https://idp.example")
    assert verify_token(good, SECRET, issuer="https://idp.example").id == "u"
    assert "invalid token" in refused(issue_token(SECRET, sub="u", role="patient", name="x", issuer="evil"),
                                      issuer="https://idp.example")
    assert "invalid token" in refused(signed(), issuer="https://idp.example")   # no iss at all
