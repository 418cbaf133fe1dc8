"""The web client end to end in headless Chromium against real gateway processes: two people matched
and chatting, the survivor's offer countdown and decline, the availability switch following the
server, chats in tabs, a reconnect after the server drops the socket (and a lost ack) with nothing
lost or doubled, a crisis message reaching a moderator's feed, typed markup staying text, and
signing in with a deployment's own token.  Screenshots go to docs/screenshots/."""
from __future__ import annotations

import asyncio
import json
import re

import pytest
from playwright.async_api import expect

from support.gateway import Client, token
from support.webpage import (
    DESK,
    become_available,
    fits_the_screen,
    matched_pair,
    open_profile,
    screenshot,
    send,
    seqs,
    sign_in,
    talk_now,
    texts,
)

pytestmark = pytest.mark.browser
PROFILE = {"diagnoses": ["breast"], "side_effects": [], "languages": ["en"]}


async def waiting_patient(g, name: str) -> Client:
    """A patient who pressed Talk now, through the protocol (cheaper than another browser)."""
    client = await Client.connect(g.ws_url, token("patient", name=name))
    await client.send({"type": "talk_now", "profile": PROFILE})
    await client.expect("queued")
    return client


async def test_patient_and_survivor_are_matched_and_talk(web, open_page):
    (g,) = web(1)
    patient, survivor = await matched_pair(open_page, g.url, g.url)
    # what is shared with the peer is spelled out on both sides
    await expect(patient.locator(".shared")).to_contain_text("Breast cancer")
    await expect(patient.locator(".shared")).to_contain_text("Sam sees your name “Pat”")

    await send(patient, "Hello, I was diagnosed last month.")
    await expect(survivor.locator(".messages .text")).to_have_text(["Hello, I was diagnosed last month."])
    # the sender sees the message acknowledged by the server
    await expect(patient.locator(".messages li.msg.mine .status")).to_have_text(["Sent"])

    await survivor.locator(".chat form.composer textarea").press_sequentially("I remem")
    await expect(patient.locator(".typing")).to_have_text("Sam is typing…")
    await send(survivor, "I remember that month. How are you sleeping?")
    await expect(patient.locator(".messages .text")).to_have_text(
        ["Hello, I was diagnosed last month.", "I remember that month. How are you sleeping?"])
    await expect(patient.locator(".typing")).to_have_text("")
    await send(patient, "Badly, to be honest. The steroids keep me up.")
    await expect(survivor.locator(".messages li.msg")).to_have_count(3)
    assert await seqs(patient) == [1, 2, 3]
    assert await seqs(survivor) == [1, 2, 3]
    assert await fits_the_screen(patient) and await fits_the_screen(survivor)
    await screenshot(patient, "patient-chat.png")

    # a report goes to the moderators, and the reporter is told it arrived
    await patient.get_by_text("Report", exact=True).click()
    await patient.get_by_label("What happened?").select_option("worried")
    await patient.get_by_role("button", name="Send report").click()
    await expect(patient.get_by_text("A moderator has been told")).to_be_visible()

    # the survivor ends the chat; the patient is told and gets the feedback step
    await survivor.get_by_role("button", name="End chat").click()
    await survivor.get_by_role("button", name="Yes, end it").click()
    await expect(patient.locator(".ended-text")).to_have_text("Sam ended the conversation.")
    await patient.get_by_label("5 — Exactly what I needed").check()
    await patient.get_by_role("button", name="Send feedback").click()
    await expect(patient.get_by_text("Thank you for your feedback.")).to_be_visible()
    await patient.get_by_role("button", name="Close").click()
    await expect(patient.get_by_role("button", name="Talk now")).to_be_visible()


async def test_offer_counts_down_and_can_be_declined(web, open_page):
    (g,) = web(1, AFTERTALK_OFFER_TIMEOUT_S="30")
    survivor = await open_page(g.url, "survivor")
    await sign_in(survivor, "survivor", "Sam")
    await become_available(survivor)
    patient = await open_page(g.url, "patient")
    await sign_in(patient, "patient", "Pat")
    await talk_now(patient)

    offer = survivor.locator("article.offer")
    await expect(offer.get_by_role("heading")).to_have_text("Pat would like to talk")
    await expect(offer).to_contain_text("You share: Breast cancer")
    seconds = offer.locator(".seconds")
    shown = await seconds.text_content()              # "30 sec": Intl's unit format for the page's locale
    first = int(shown.split()[0])
    assert 25 <= first <= 30
    await expect(seconds).not_to_have_text(shown, timeout=3000)
    later = int((await seconds.text_content()).split()[0])
    assert later < first
    assert await fits_the_screen(survivor)
    await screenshot(survivor, "survivor-offer.png")

    await offer.get_by_role("button", name="Decline").click()
    await expect(offer).to_contain_text("You declined")
    # nobody else is available: the patient keeps waiting, the survivor's switch is still on
    await expect(patient.locator("#queue-position")).to_have_text(re.compile("in line"))
    await expect(survivor.get_by_role("switch")).to_have_attribute("aria-checked", "true")


async def test_reconnect_after_the_server_drops_the_socket_loses_and_doubles_nothing(web, open_page):
    g1, g2 = web(2)
    patient, survivor = await matched_pair(open_page, g1.url, g2.url)
    await send(patient, "before 1")
    await send(survivor, "before 2")
    await expect(patient.locator(".messages li.msg[data-seq]")).to_have_count(2)

    g1.kill()                                           # the patient's gateway dies: the socket drops
    await expect(patient.locator("#conn-banner")).to_contain_text("Reconnecting…")
    await send(patient, "typed while offline 1")       # kept in the outbox, shown as waiting
    await send(patient, "typed while offline 2")
    await expect(patient.locator(".messages li.msg[data-state=queued]")).to_have_count(2)
    await send(survivor, "sent while Pat was away 1")  # stored through the other gateway
    await send(survivor, "sent while Pat was away 2")
    await expect(survivor.locator(".messages li.msg[data-seq]")).to_have_count(4)

    g1.start()                                          # same port: the page reconnects by itself
    await expect(patient.locator("#conn-banner")).to_be_hidden(timeout=20_000)
    await expect(patient.locator(".messages li.msg[data-seq]")).to_have_count(6)
    await send(survivor, "after")
    await expect(patient.locator(".messages li.msg[data-seq]")).to_have_count(7)
    await expect(survivor.locator(".messages li.msg[data-seq]")).to_have_count(7)

    expected = {"before 1", "before 2", "typed while offline 1", "typed while offline 2",
                "sent while Pat was away 1", "sent while Pat was away 2", "after"}
    for page in (patient, survivor):
        assert await seqs(page) == [1, 2, 3, 4, 5, 6, 7]
        got = await texts(page)
        assert sorted(got) == sorted(expected), got
    assert await patient.locator(".messages li.msg.mine .status").all_text_contents() == ["Sent"] * 3


async def test_a_message_whose_ack_was_lost_is_sent_again_and_shown_once(web, open_page):
    """The server stored the message but the page never heard back (neither the ack nor the echo), and
    the line dropped.  The page resends it with the same client_id after reconnecting; the server's
    idempotency answers with the first seq, and the page shows the message once."""
    (g,) = web(1)
    lose_next = {"on": False}
    routes = []
    sent_ids = []

    def between(ws):
        server = ws.connect_to_server()
        routes.append(ws)

        def to_server(message):
            frame = json.loads(message)
            if frame["type"] == "send":
                sent_ids.append(frame["client_id"])
            server.send(message)
        ws.on_message(to_server)

        def to_page(message):
            frame = message if isinstance(message, str) else message.decode()
            if lose_next["on"] and ('"type":"ack"' in frame or '"type":"message"' in frame):
                return                                   # lost on the way to the page
            ws.send(message)
        server.on_message(to_page)

    patient, survivor = await matched_pair(open_page, g.url, g.url, patient_ws=between)
    lose_next["on"] = True
    await send(patient, "did this arrive?")
    await expect(survivor.locator(".messages .text")).to_have_text(["did this arrive?"])   # stored and relayed
    await expect(patient.locator(".messages li.msg[data-state=sending]")).to_have_count(1)  # but not acked here
    lose_next["on"] = False
    await routes[-1].close(code=1001, reason="going away")   # the server side drops the socket
    await expect(patient.locator(".messages li.msg.mine .status")).to_have_text(["Sent"])
    assert await seqs(patient) == [1]
    for _ in range(50):                                       # the route reports frames asynchronously
        if len(sent_ids) >= 2:
            break
        await asyncio.sleep(0.1)
    assert len(sent_ids) == 2 and sent_ids[0] == sent_ids[1]        # the same message, sent twice
    await send(survivor, "yes, once")
    await expect(patient.locator(".messages li.msg[data-seq]")).to_have_count(2)
    assert await seqs(patient) == [1, 2]
    assert await seqs(survivor) == [1, 2]


async def test_crisis_message_raises_a_flag_on_the_moderator_page(web, open_page):
    (g,) = web(1)
    moderator = await open_page(g.url, "moderator", viewport=DESK)
    await sign_in(moderator, "moderator", "Mo")
    await expect(moderator.get_by_text("No open flags")).to_be_visible()
    patient, survivor = await matched_pair(open_page, g.url, g.url)

    await send(patient, "Some days I want to end my life.")
    flag = moderator.locator(".flag-feed li.flag")
    await expect(flag).to_have_count(1)
    await expect(flag.locator(".category")).to_have_text("Crisis")
    await expect(flag.locator(".pill").first).to_have_text(re.compile("high", re.I))
    await expect(flag.locator(".excerpt")).to_contain_text("I want to end my life")
    # the author is shown where to find help right now
    await expect(patient.locator("#resources")).to_be_visible()
    await expect(patient.locator("#resources")).to_contain_text("Emergency services")

    await flag.get_by_role("button", name="Open conversation").click()
    watch = moderator.locator("section.watch")
    await expect(watch.locator(".messages .text")).to_have_text(["Some days I want to end my life."])
    await expect(watch).to_contain_text("Conversation between Pat (patient) and Sam (survivor)")
    await send(survivor, "I'm really glad you told me.")
    await expect(watch.locator(".messages .text")).to_have_count(2)
    await watch.get_by_label("Post a notice both people will see").fill(
        "A moderator is here with you both. Pat, please look at the support lines at the top of your screen.")
    await watch.get_by_role("button", name="Post notice").click()
    await expect(patient.locator(".messages li.msg.notice")).to_contain_text("A moderator is here")
    await expect(flag.locator(".status-tag")).to_have_text("being reviewed")
    await screenshot(moderator, "moderator-feed.png")

    await flag.get_by_label("Resolution").fill("Talked it through; resources shown.")
    await flag.get_by_role("button", name="Resolve").click()
    await expect(moderator.get_by_text("No open flags")).to_be_visible()

    await moderator.get_by_role("tab", name="Audit log").click()
    rows = moderator.locator("section.audit tbody tr")
    await expect(rows.filter(has_text="notice")).to_have_count(1)
    await expect(rows.filter(has_text="watch")).not_to_have_count(0)


async def test_markup_in_messages_and_names_is_shown_as_text_and_runs_nothing(web, open_page):
    (g,) = web(1)
    hostile = "<img src=x onerror=alert(1)>"
    patient, survivor = await matched_pair(open_page, g.url, g.url, patient=hostile)
    await expect(survivor.get_by_role("heading", name=f"You are talking with {hostile}")).to_be_visible()
    await send(patient, "<img src=x onerror=alert(1)>")
    await send(patient, "<script>alert(2)</script>")
    await send(survivor, "<b>bold?</b> <a href=javascript:alert(3)>link</a>")
    want = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script>",
            "<b>bold?</b> <a href=javascript:alert(3)>link</a>"]
    for page in (patient, survivor):
        await expect(page.locator(".messages .text")).to_have_text(want)
        assert await page.locator(".messages img, .messages script, .messages b, .messages a").count() == 0
        assert await page.locator("main img").count() == 0
    await patient.wait_for_timeout(300)      # give an injected handler the chance to fire, had there been one
    assert open_page.problems.dialogs == []


async def isolated(locator) -> bool:
    """Whether the element is a <bdi> or sits in one / in an element with dir="auto", so that the
    direction of its text cannot reorder the text around it."""
    return await locator.evaluate("el => Boolean(el.closest('bdi, [dir=auto]'))")


async def test_names_are_shown_without_bidi_controls_and_isolated_from_the_text_around_them(web, open_page):
    (g,) = web(1)
    hostile = "\u202eretarednoM"                  # a right-to-left override: would show as "Moderator"
    moderator = await open_page(g.url, "moderator", viewport=DESK)
    await sign_in(moderator, "moderator", "Mo")
    survivor = await open_page(g.url, "survivor")
    await sign_in(survivor, "survivor", "Sam")
    await become_available(survivor)
    patient = await open_page(g.url, "patient")
    await sign_in(patient, "patient", hostile)
    await talk_now(patient)

    offer = survivor.locator("article.offer")
    offer_name = offer.locator("h3 bdi, h3 [dir=auto]")
    await expect(offer_name).to_have_text("retarednoM")
    assert await isolated(offer_name)
    await offer.get_by_role("button", name="Accept").click()
    heading = survivor.get_by_role("heading", name="You are talking with retarednoM")
    await expect(heading).to_be_visible()
    assert "\u202e" not in await heading.text_content()
    header_name = heading.locator("bdi, [dir=auto]")
    await expect(header_name).to_have_text("retarednoM")
    assert await isolated(header_name)
    await expect(patient.get_by_role("heading", name="You are talking with Sam")).to_be_visible()
    assert await isolated(patient.locator(".chat-head h2 bdi, .chat-head h2 [dir=auto]"))

    await send(patient, "Some days I want to end my life.")
    author = survivor.locator(".messages li.msg .who")
    await expect(author).to_have_text("retarednoM")
    assert await isolated(author.locator("bdi, [dir=auto]"))
    await expect(survivor.locator(".chat-head bdi, .chat-head [dir=auto]").first).to_have_text("retarednoM")

    # the moderator's view of the participants
    flag = moderator.locator(".flag-feed li.flag")
    await flag.get_by_role("button", name="Open conversation").click()
    watch = moderator.locator("section.watch")
    await expect(watch).to_contain_text("Conversation between retarednoM (patient) and Sam (survivor)")
    people = watch.get_by_text("retarednoM", exact=True).first
    assert await isolated(people)
    await expect(watch.locator(".messages li.msg .who")).to_have_text("retarednoM (patient)")
    assert await isolated(watch.locator(".messages li.msg .who").get_by_text("retarednoM", exact=True))
    for page in (patient, survivor, moderator):
        assert "\u202e" not in await page.locator("body").text_content()


async def test_availability_switch_shows_the_server_turning_it_off_after_missed_offers(web, open_page):
    (g,) = web(1, AFTERTALK_OFFER_TIMEOUT_S="1")
    survivor = await open_page(g.url, "survivor")
    await sign_in(survivor, "survivor", "Sam")
    await become_available(survivor)
    patients = [await waiting_patient(g, "Ana"), await waiting_patient(g, "Ben")]
    switch = survivor.get_by_role("switch", name="Available for new chats")
    # two offers lapse unanswered: the server switches the survivor off, and the switch follows it
    await expect(switch).to_have_attribute("aria-checked", "false")
    await expect(survivor.locator("#availability-state")).to_contain_text("unanswered")
    await expect(survivor.locator("article.offer")).to_contain_text(["The time to answer ran out"] * 2)
    for p in patients:
        await p.close()


async def test_several_chats_are_tabs(web, open_page):
    (g,) = web(1)
    survivor = await open_page(g.url, "survivor")
    await sign_in(survivor, "survivor", "Sam")
    await open_profile(survivor)
    await survivor.get_by_label("Chats at once").select_option("2")
    await become_available(survivor)
    ana = await waiting_patient(g, "Ana")
    await survivor.locator("article.offer").get_by_role("button", name="Accept").click()
    ben = await waiting_patient(g, "Ben")
    await survivor.locator("article.offer", has_text="Ben").get_by_role("button", name="Accept").click()
    tabs = survivor.get_by_role("tab")
    await expect(tabs).to_have_text([re.compile("^Ana"), re.compile("^Ben")])
    await expect(tabs.nth(1)).to_have_attribute("aria-selected", "true")
    matched = await ana.expect("matched")
    await ana.send({"type": "send", "conversation_id": matched["conversation_id"], "client_id": "a1",
                    "text": "Are you still there?"})
    await expect(tabs.nth(0).locator(".badge")).to_be_visible()      # unread, in the other tab
    await tabs.nth(1).focus()
    await survivor.keyboard.press("ArrowLeft")                        # keyboard moves between tabs
    await expect(tabs.nth(0)).to_have_attribute("aria-selected", "true")
    await expect(survivor.locator(".chat:visible .messages .text")).to_have_text(["Are you still there?"])
    await expect(tabs.nth(0).locator(".badge")).to_be_hidden()

    # blocking ends that chat for both and keeps the pair apart
    await tabs.nth(1).click()
    await survivor.locator(".chat:visible").get_by_role("button", name="Block").click()
    await survivor.get_by_role("button", name="Block", exact=True).last.click()
    ended = await ben.expect("ended")
    assert ended["blocked"] is True
    await expect(survivor.locator(".chat:visible .ended-text")).to_have_text(
        "You blocked this person and the conversation ended.")
    await ana.close()
    await ben.close()


async def test_without_demo_a_token_comes_from_the_url_fragment_or_is_pasted(gateways, open_page):
    (g,) = gateways(1)
    page = await open_page(g.url, "signin")
    assert await page.locator("#role-patient").count() == 0           # no demo sign-in on a real deployment
    await page.get_by_label("Sign-in token").fill(token("survivor", name="Sam"))
    await page.get_by_role("button", name="Use this token").click()
    await expect(page.locator(".page-survivor")).to_be_visible()

    # a deployment's sign-in redirects to /#token=...: the page keeps it for the tab and hides it
    moderator = await open_page(f"{g.url}/#token={token('moderator', name='Mo')}", "fragment")
    await expect(moderator.locator(".page-moderator")).to_be_visible()
    assert "token" not in moderator.url
    await moderator.reload()
    await expect(moderator.locator(".page-moderator")).to_be_visible()
