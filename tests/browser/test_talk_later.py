"""Issue 14 in the web client, in headless Chromium against real gateway processes (two where the
issue asks): the honest waiting screen when nobody who fits is free (what it says, what it offers in one
place, widening in place until a volunteer fits); a talk-later request (cancelled, asked again with a
note) accepted while the patient's page was closed, and found at the top on their return with the
volunteer's first message; two people keeping in touch (both must ask), the contacts list with who is
available now, "Talk again" as a live offer (declined) and as a talk-later request addressed to that
volunteer when away, and "End".  The new screens are audited with axe-core as they appear."""
from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from support.webpage import (
    AXE,
    PROFILE_LABEL,
    axe_violations,
    matched_pair,
    open_profile,
    screenshot,
    send,
    sign_in,
)

pytestmark = pytest.mark.browser
TALL_PHONE = {"width": 390, "height": 1700}


async def speaks_only(page, language: str, scope: str = "") -> None:
    """Choose exactly one language in the profile's language list (the second fold-out)."""
    pick = page.locator(f"{scope} details.pick".strip()).nth(1)
    if not await pick.evaluate("d => d.open"):
        await pick.locator("summary").click()
    for box in await pick.locator("input[type=checkbox]:checked").all():
        await box.uncheck()
    await pick.get_by_label(language, exact=True).check()


async def nobody_fits(page) -> None:
    """A patient with breast cancer who speaks only Finnish presses Talk now; nobody who fits is free."""
    await page.get_by_label("Your diagnosis").select_option(label=PROFILE_LABEL)
    await speaks_only(page, "Finnish")
    await page.get_by_role("button", name="Talk now").click()
    await expect(page.locator("#queue-title")).to_have_text("Nobody who fits is free right now")


async def audit(page, screen: str) -> None:
    if not AXE.exists():
        return
    found = await axe_violations(page)
    assert not found, f"{screen}: {found}"


async def test_the_waiting_screen_says_nobody_fits_and_widening_finds_someone(web, open_page):
    (g,) = web(1)
    survivor = await open_page(g.url, "survivor")
    await sign_in(survivor, "survivor", "Sam")
    await open_profile(survivor)
    await survivor.get_by_label("Your diagnosis").select_option(label=PROFILE_LABEL)
    await survivor.get_by_role("switch", name="Available for new chats").click()       # Sam chats in English
    await expect(survivor.get_by_role("switch")).to_have_attribute("aria-checked", "true")

    patient = await open_page(g.url, "patient", viewport=TALL_PHONE)     # the whole screen in the screenshot
    await sign_in(patient, "patient", "Pat")
    await nobody_fits(patient)
    queue = patient.locator("section.queue")
    # the truth, with what was asked for in words, and no made-up estimate
    await expect(queue.locator("#queue-wait")).to_have_text(re.compile(
        r"^Nobody who shares Breast cancer and speaks Finnish is free right now"))
    await expect(queue).not_to_contain_text("Estimated wait")
    # in one place: widen (naming what would change), a talk later, the crisis lines; no groups yet
    options = queue.locator(".wait-options")
    await expect(options.get_by_role("heading")).to_have_text(
        ["What you can do now", "Widen your search", "Ask for a talk later", "If you cannot wait"])
    widen = options.get_by_role("button", name="Also volunteers who chat in English")
    await expect(widen).to_be_visible()
    await expect(options).to_contain_text("You keep your place in line.")
    await expect(options.locator(".crisis-now")).to_contain_text("call your local emergency number")
    # and the deployment's lines (here the shipped default), though nothing was flagged
    await expect(options.locator(".crisis-now ul.lines")).to_contain_text("Emergency services")
    await expect(options).not_to_contain_text(re.compile("group", re.I))
    await screenshot(patient, "patient-waiting-nobody-fits.png")
    await audit(patient, "waiting, nobody fits")

    await widen.click()                    # the request now includes English: Sam fits, and is offered it
    offer = survivor.locator("article.offer")
    await expect(offer.get_by_role("heading")).to_have_text("Pat would like to talk")
    await expect(patient.locator("#queue-title")).to_have_text("Finding someone for you…")
    await offer.get_by_role("button", name="Accept").click()
    await expect(patient.get_by_role("heading", name="You are talking with Sam")).to_be_visible()


async def test_a_talk_later_accepted_while_the_page_was_closed_is_there_on_return(web, open_page):
    g1, g2 = web(2)
    patient = await open_page(g1.url, "patient")
    await sign_in(patient, "patient", "Pat")
    # asked, then cancelled: the request is gone and the page says so
    await nobody_fits(patient)
    await patient.locator("form.later-form").get_by_role("button", name="Ask for a talk later").click()
    await patient.locator("#later").get_by_role("button", name="Cancel the request").click()
    await expect(patient.locator(".note")).to_have_text("You cancelled your request for a talk later.")
    await expect(patient.locator("#later")).to_be_hidden()

    await patient.get_by_role("button", name="Talk now").click()
    await expect(patient.locator("#queue-title")).to_have_text("Nobody who fits is free right now")
    note = "Evenings suit me best. <b>not bold</b>"
    form = patient.locator("form.later-form")
    await form.get_by_label("Keep my request open").select_option("48")
    await form.get_by_label("A note for the volunteer (optional)").fill(note)
    await form.get_by_role("button", name="Ask for a talk later").click()
    card = patient.locator("#later")
    await expect(card.get_by_role("heading")).to_have_text("Your request for a talk later")
    await expect(card.locator(".expires")).to_contain_text("Open until")
    await expect(card.locator("blockquote")).to_have_text(note)
    await expect(patient.locator("section.queue")).to_be_hidden()         # out of the live line
    await expect(card.get_by_role("button", name="Cancel the request")).to_be_visible()
    await screenshot(patient, "patient-later-pending.png")
    await audit(patient, "talk-later request pending")
    await patient.context.close()                                         # the patient goes away

    survivor = await open_page(g2.url, "survivor")
    await sign_in(survivor, "survivor", "Sam")
    await open_profile(survivor)
    await survivor.get_by_label("Your diagnosis").select_option(label=PROFILE_LABEL)
    await speaks_only(survivor, "Finnish")
    await survivor.get_by_role("switch", name="Available for new chats").click()
    later = survivor.locator("article.later-offer")
    await expect(later.get_by_role("heading")).to_have_text("Pat asked for a talk later")
    await expect(later.locator("blockquote")).to_have_text(note)            # the patient's words, as text
    assert await later.locator("blockquote b").count() == 0
    await expect(later).to_contain_text("There is no time limit to answer")
    await expect(later.locator("time")).to_have_text(re.compile(r"^\d\d:\d\d"))       # waiting since, Intl
    await expect(later.locator(".seconds")).to_have_count(0)
    await screenshot(survivor, "survivor-later-card.png")
    await audit(survivor, "talk-later card")
    await later.get_by_role("button", name="Accept").click()
    await expect(survivor.get_by_role("heading", name="You are talking with Pat")).to_be_visible()
    await send(survivor, "Hei! I am here.")
    await expect(survivor.locator(".messages li.msg.mine .status")).to_have_text(["Sent"])

    back = await open_page(g1.url, "patient again")
    await sign_in(back, "patient", "Pat")
    await expect(back.locator(".note")).to_have_text(
        "Sam accepted your request for a talk later. The conversation is below.")
    await expect(back.get_by_role("heading", name="You are talking with Sam")).to_be_visible()
    await expect(back.locator(".chat:visible .messages .text")).to_have_text(["Hei! I am here."])
    first = back.locator(".deck .panels > .chat").first
    await expect(first).to_be_visible()
    await expect(back.locator("#later")).to_be_hidden()
    await send(back, "Kiitos, thank you for answering.")
    await expect(survivor.locator(".messages .text")).to_have_text(
        ["Hei! I am here.", "Kiitos, thank you for answering."])


async def test_two_people_keep_in_touch_and_talk_again(web, open_page):
    g1, g2 = web(2)
    patient, survivor = await matched_pair(open_page, g1.url, g2.url)
    await survivor.get_by_role("button", name="End chat").click()
    await survivor.get_by_role("button", name="Yes, end it").click()
    for page, peer in ((patient, "Sam"), (survivor, "Pat")):
        await expect(page.locator(".keep-in-touch .keep-question")).to_have_text(f"Keep in touch with {peer}?")

    await patient.get_by_role("button", name="Keep in touch").click()
    await expect(patient.locator(".keep-in-touch [role=status]")).to_have_text(
        "Noted. If Sam would like that too, they will be in your contacts.")
    await expect(survivor.locator("#contacts")).to_be_hidden()          # one side asking makes no contact
    await survivor.get_by_role("button", name="Keep in touch").click()
    await expect(survivor.locator(".keep-in-touch [role=status]")).to_have_text("You and Pat keep in touch.")
    await expect(patient.locator(".keep-in-touch [role=status]")).to_have_text("You and Sam keep in touch.")
    await expect(survivor.locator("#contacts li.contact")).to_have_count(1)
    await expect(survivor.locator("#contacts li.contact")).to_contain_text("Pat")
    await expect(survivor.locator("#contacts").get_by_role("button", name="Talk again")).to_have_count(0)

    await patient.get_by_role("button", name="Close").click()            # back to the start: contacts there
    contacts = patient.locator("#contacts")
    await expect(contacts.get_by_role("heading")).to_have_text("People you keep in touch with")
    await expect(contacts.locator("li.contact")).to_have_text([re.compile("^Sam")])
    # who is available now comes with every welcome: after a reload Sam shows as available
    await patient.reload()
    await expect(contacts.locator("li.contact")).to_have_text([re.compile("^Sam available now")])
    await screenshot(patient, "patient-contacts.png")
    await audit(patient, "contacts")
    # Sam is available: "Talk again" is an ordinary offer to Sam only; a decline ends the request
    await contacts.get_by_role("button", name="Talk again with Sam").click()
    await expect(patient.locator("#queue-title")).to_have_text("Asking Sam…")
    offer = survivor.locator("article.offer:not(.later-offer)")
    await expect(offer.get_by_role("heading")).to_have_text("Pat would like to talk")
    await offer.get_by_role("button", name="Decline").click()
    await expect(patient.locator(".note")).to_have_text(
        "Sam cannot talk right now. You can ask for a talk later, or talk with someone else.")
    # Sam is away: "Talk again" becomes a talk-later request addressed to Sam, and Sam alone
    switch = survivor.get_by_role("switch", name="Available for new chats")
    await switch.click()
    await expect(switch).to_have_attribute("aria-checked", "false")
    await contacts.get_by_role("button", name="Talk again with Sam").click()
    await expect(patient.locator("#later")).to_contain_text("We will ask Sam when they are next free.")
    await switch.click()                                                  # Sam is back
    card = survivor.locator("article.later-offer")
    await expect(card.get_by_role("heading")).to_have_text("Pat asked for a talk later")
    await card.get_by_role("button", name="Accept").click()
    await expect(patient.get_by_role("heading", name="You are talking with Sam")).to_be_visible()
    await expect(survivor.get_by_role("tab", name=re.compile("Pat"))).to_have_count(2)     # the ended chat, the new
    await send(patient, "Good to talk to you again.")
    await expect(survivor.locator(".chat:visible .messages .text")).to_have_text(["Good to talk to you again."])

    # either side can end it; the other side is not told
    mine = survivor.locator("#contacts")
    await mine.get_by_role("button", name="End").click()
    await mine.get_by_role("button", name="Yes, end it").click()
    await expect(mine.locator("li.contact")).to_have_count(0)
    await expect(mine).to_contain_text("You no longer keep in touch with Pat.")
