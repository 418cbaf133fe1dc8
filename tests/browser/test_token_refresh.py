"""The web client keeps its session past its token's exp (issue 11): on ``token_expiring`` it fetches a
fresh token from its sign-in source (the demo sign-in, or a deployment's ``window.aftertalkAuth.refresh``)
and answers ``reauth`` on the same socket; with no sign-in source it is signed out at exp."""
from __future__ import annotations

import asyncio
import time

import pytest
from playwright.async_api import expect

from support.gateway import token
from support.webpage import matched_pair, send, sign_in, talk_now

pytestmark = pytest.mark.browser
TTL = 4            # seconds of every token: several refreshes happen during one test

WATCH = """() => {
  const conn = window.aftertalk;
  window.__seen = { reauthed: 0, expiring: 0, refused: 0, drops: 0, socket: conn.ws };
  conn.on("reauthed", () => { window.__seen.reauthed += 1; });
  conn.on("token_expiring", () => { window.__seen.expiring += 1; });
  conn.on("error", (f) => { if (f.ref === "reauth") window.__seen.refused += 1; });
  conn.on("state", (s) => { if (s.state !== "open") window.__seen.drops += 1; });
}"""
SEEN = """() => ({ ...window.__seen, socket: undefined, same: window.aftertalk.ws === window.__seen.socket,
                   state: window.aftertalk.state, token: sessionStorage.getItem("aftertalk.token") })"""


async def test_demo_client_refreshes_its_token_and_stays_on_the_same_connection(web, open_page):
    (g,) = web(1, AFTERTALK_DEMO_TOKEN_TTL_S=TTL)
    patient, survivor = await matched_pair(open_page, g.url, g.url)
    for page in (patient, survivor):
        await page.evaluate(WATCH)
    first_token = await patient.evaluate("() => sessionStorage.getItem('aftertalk.token')")
    await asyncio.sleep(2.5 * TTL)                 # two to three token lifetimes, each refreshed
    for page in (patient, survivor):
        seen = await page.evaluate(SEEN)
        assert seen["reauthed"] >= 2 and seen["expiring"] == seen["reauthed"], seen
        assert seen["refused"] == 0 and seen["drops"] == 0 and seen["same"] and seen["state"] == "open", seen
    assert (await patient.evaluate(SEEN))["token"] != first_token     # a reload would sign in with the new one
    await send(patient, "still here after the first token ran out")
    await expect(survivor.locator(".messages .text")).to_have_text(["still here after the first token ran out"])
    await expect(patient.locator(".messages li.msg.mine .status")).to_have_text(["Sent"])
    await expect(patient.locator("#conn-banner")).to_be_hidden()


async def test_a_deployments_refresh_hook_supplies_the_fresh_token(gateways, open_page):
    (g,) = gateways(1)                             # not demo: the page's own hook is the sign-in source
    sub = "pat-hooked"
    calls: list[float] = []

    def fresh() -> str:
        calls.append(time.time())
        return token("patient", sub, "Pat", ttl=TTL)

    page = await open_page("about:blank", "patient")
    await page.expose_function("freshToken", fresh)
    await page.add_init_script("window.aftertalkAuth = { refresh: () => window.freshToken() };")
    await page.goto(f"{g.url}/#token={token('patient', sub, 'Pat', ttl=TTL)}")
    await expect(page.locator(".page-patient")).to_be_visible()
    await page.evaluate(WATCH)
    await asyncio.sleep(2.5 * TTL)
    seen = await page.evaluate(SEEN)
    assert len(calls) >= 2 and seen["reauthed"] >= 2 and seen["drops"] == 0 and seen["same"], (calls, seen)


async def test_without_a_sign_in_source_the_page_asks_to_sign_in_again_at_exp(gateways, open_page):
    (g,) = gateways(1)
    page = await open_page(f"{g.url}/#token={token('patient', ttl=TTL)}", "patient")
    await expect(page.locator(".page-patient")).to_be_visible()
    await expect(page.get_by_role("alert")).to_have_text("Your sign-in has expired. Please sign in again.",
                                                          timeout=(TTL + 3) * 1000)
    assert await page.evaluate("() => sessionStorage.getItem('aftertalk.token')") is None


async def test_when_the_token_runs_out_anyway_the_demo_client_signs_in_afresh_and_reconnects(web, open_page):
    """The reauth never reaches the server (dropped on the way): the server closes 4401 "token expired"
    at exp, and the page fetches a fresh token and reconnects instead of showing the sign-in form."""
    (g,) = web(1, AFTERTALK_DEMO_TOKEN_TTL_S=TTL)
    sockets: list[str] = []
    closes: list[tuple[int | None, str | None]] = []

    def between(ws):
        server = ws.connect_to_server()
        first = not sockets
        sockets.append(ws.url)

        def to_server(message):
            if first and '"type":"reauth"' in message:
                return                                   # lost: this socket keeps its first token
            server.send(message)
        ws.on_message(to_server)

        async def server_closed(code, reason):
            closes.append((code, reason))
            await ws.close(code=code, reason=reason)
        server.on_close(server_closed)

    page = await open_page("about:blank", "patient")
    await page.route_web_socket(lambda u: u.endswith("/ws"), between)
    await page.goto(g.url)
    await sign_in(page, "patient", "Pat")
    await expect(page.locator(".page-patient")).to_be_visible()
    for _ in range(int((TTL + 4) / 0.2)):
        if len(sockets) >= 2 and await page.evaluate("() => window.aftertalk.state") == "open":
            break
        await asyncio.sleep(0.2)
    assert closes[:1] == [(4401, "token expired")] and len(sockets) >= 2, (closes, sockets)
    assert await page.evaluate("() => window.aftertalk.state") == "open"
    await expect(page.locator(".page-patient")).to_be_visible()
    assert await page.locator("form.signin-demo").count() == 0
    await talk_now(page)                                  # and the new session works
