"""The token clock of gateway/expiry.py: when ``token_expiring`` is sent, what a reauth may change,
and that the timers warn, close at exp, re-arm on reauth and let go of a closed connection."""
from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from core.errors import ErrorCode, ServiceError
from gateway.auth import Identity
from gateway.connection import Conn
from gateway.expiry import TokenClock, reauthorized, warn_lead
from gateway.limits import TokenBucket


@pytest.mark.parametrize(("remaining", "ahead", "lead"), [
    (3600, 60, 60),          # a long token: warned the configured time ahead
    (121, 60, 60),
    (100, 60, 50),           # shorter than twice the lead: warned half-way, not at once
    (3, 60, 1.5),
    (0.5, 60, 0.25),
    (0, 60, 0),              # nothing left: no lead (the connection is closed at once)
    (-5, 60, 0),
])
def test_warn_lead_is_the_setting_clipped_to_half_the_tokens_remaining_life(remaining, ahead, lead):
    assert warn_lead(remaining, ahead) == pytest.approx(lead)


def test_warning_always_leaves_the_client_time_and_never_comes_after_exp():
    for remaining in (0.01, 0.2, 1, 7, 59, 60, 61, 119, 120, 121, 86400):
        for ahead in (0.5, 1, 30, 60, 300):
            lead = warn_lead(remaining, ahead)
            assert 0 < lead <= min(ahead, remaining / 2) + 1e-9


NOW = 1_800_000_000.0
ME = Identity(id="u1", role="patient", name="Pat", exp=NOW + 30, iat=NOW - 100)


def refusal(fresh: Identity) -> str:
    with pytest.raises(ServiceError) as info:
        reauthorized(ME, fresh, NOW)
    assert info.value.code == ErrorCode.REAUTH_REFUSED
    return str(info.value.data["reason"])


def test_reauth_takes_the_new_exp_and_iat_and_keeps_the_session_name():
    fresh = Identity(id="u1", role="patient", name="Renamed", exp=NOW + 3600, iat=NOW)
    assert reauthorized(ME, fresh, NOW) == Identity(id="u1", role="patient", name="Pat", exp=NOW + 3600, iat=NOW)


def test_reauth_refuses_another_user_another_role_or_an_expired_token():
    assert refusal(Identity(id="u2", role="patient", name="Pat", exp=NOW + 3600, iat=NOW)) == "other_user"
    assert refusal(Identity(id="u1", role="survivor", name="Pat", exp=NOW + 3600, iat=NOW)) == "other_role"
    assert refusal(Identity(id="u1", role="patient", name="Pat", exp=NOW, iat=NOW)) == "token_expired"


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.closed_with: tuple[int, str] | None = None

    async def send_text(self, text: str) -> None:
        self.sent.append(orjson.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


def conn_with(exp_in: float) -> tuple[Conn, FakeSocket]:
    ws = FakeSocket()
    now = time.monotonic()
    user = Identity(id="u1", role="patient", name="Pat", exp=time.time() + exp_in, iat=time.time())
    conn = Conn(ws, user, "c1", outbox_limit=16, frames=TokenBucket(10, 10, now), on_slow=lambda c: None)
    return conn, ws


async def test_the_clock_warns_then_closes_4401_at_exp():
    conn, ws = conn_with(0.4)
    TokenClock(ahead_s=60).arm(conn)
    await asyncio.sleep(0.3)                      # warned half-way (0.2 s)
    assert [f["type"] for f in ws.sent] == ["token_expiring"] and 0 < ws.sent[0]["in_s"] <= 0.2
    assert ws.closed_with is None
    await asyncio.sleep(0.25)
    assert ws.closed_with == (4401, "token expired") and conn.expiry is None


async def test_re_arming_for_a_new_token_cancels_the_old_timer():
    conn, ws = conn_with(0.3)
    clock = TokenClock(ahead_s=60)
    clock.arm(conn)
    conn.user = Identity(id="u1", role="patient", name="Pat", exp=time.time() + 3600, iat=time.time())
    clock.arm(conn)
    await asyncio.sleep(0.5)
    assert ws.sent == [] and ws.closed_with is None and not conn.closed
    conn.disarm()


async def test_a_closed_connection_lets_go_of_its_timer():
    conn, _ = conn_with(3600)
    TokenClock(ahead_s=60).arm(conn)
    handle = conn.expiry
    assert handle is not None
    conn.close(1000, "bye")
    assert conn.expiry is None and handle.cancelled()


async def test_a_token_with_nothing_left_closes_at_once():
    conn, ws = conn_with(-1)
    TokenClock(ahead_s=60).arm(conn)
    await asyncio.sleep(0.05)
    assert ws.closed_with == (4401, "token expired")


async def test_the_close_waits_for_the_wall_clock_when_the_clocks_drift():
    conn, ws = conn_with(0.2)
    behind = [0.0]                                 # the wall clock runs 0.2 s behind the loop's clock
    TokenClock(ahead_s=60, wall=lambda: time.time() - behind[0]).arm(conn)
    await asyncio.sleep(0.15)
    behind[0] = 0.2
    await asyncio.sleep(0.15)                       # the loop's timer is due, the wall clock says not yet
    assert ws.closed_with is None
    await asyncio.sleep(0.3)
    assert ws.closed_with == (4401, "token expired")
