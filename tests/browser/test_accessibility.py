"""Accessibility as a tested property: axe-core (npm, tests/browser/axe) finds no serious or critical
violation on any main screen of any role, in English and in Arabic (right to left): sign-in, profile,
waiting, offer, chat (with the crisis panel), ended with feedback, the moderator's feed, the watched
chat and the audit log.  And a patient and a survivor get from sign-in to a sent message with the
keyboard alone, the focus visible at every step, in a browser that asks for reduced motion."""
from __future__ import annotations

import pytest
from playwright.async_api import expect

from support.webpage import (
    AXE,
    DESK,
    available,
    axe_violations,
    choose_diagnosis,
    focus_is_visible,
    sign_in_as,
)

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _axe_installed():
    if not AXE.exists():
        pytest.skip(f"axe-core is not installed at {AXE} (make test runs npm ci in tests/browser/axe)")


class Audit:
    def __init__(self) -> None:
        self.found: dict[str, list] = {}
        self.screens: list[str] = []

    async def __call__(self, page, screen: str, within: str | None = None) -> None:
        self.screens.append(screen)
        violations = await axe_violations(page, within)
        if violations:
            self.found[screen] = violations

    def report(self) -> str:
        return "\n".join(f"{screen}: {v['id']} ({v['impact']}): {v['help']}: {v['nodes']}"
                         for screen, found in self.found.items() for v in found)


@pytest.mark.parametrize("locale", ["en-US", "ar-EG"])
async def test_every_main_screen_of_every_role_passes_axe(web, open_page, locale):
    (g,) = web(1)
    audit = Audit()
    m = await open_page(g.url, "moderator", viewport=DESK, locale=locale)
    if locale.startswith("ar"):
        await expect(m.locator("html")).to_have_attribute("dir", "rtl")
    await audit(m, "sign-in")
    await sign_in_as(m, "moderator", "Mo")
    await audit(m, "moderator feed (empty)")

    p = await open_page(g.url, "patient", locale=locale)
    await sign_in_as(p, "patient", "Pat")
    await audit(p, "patient profile")
    await choose_diagnosis(p)
    await p.locator("button.talk-now").click()
    await expect(p.locator("section.queue")).to_be_visible()
    await audit(p, "patient waiting")

    s = await open_page(g.url, "survivor", locale=locale)
    await sign_in_as(s, "survivor", "Sam")
    await audit(s, "survivor profile")
    await available(s)
    offer = s.locator("article.offer")
    await expect(offer).to_be_visible()
    await audit(s, "survivor offer")
    await offer.locator("button.primary").click()
    await expect(s.locator(".chat form.composer")).to_be_visible()
    await expect(p.locator(".chat form.composer")).to_be_visible()

    await p.locator(".chat form.composer textarea").fill("Some days I want to end my life.")
    await p.locator(".chat form.composer textarea").press("Enter")
    await expect(p.locator("#resources")).to_be_visible()
    await expect(s.locator(".messages li.msg")).to_have_count(1)
    await audit(p, "patient chat with the crisis panel")
    await audit(s, "survivor chat")

    flag = m.locator(".flag-feed li.flag")
    await expect(flag).to_have_count(1)
    await audit(m, "moderator feed with a flag")
    await flag.locator("button.primary").click()
    await expect(m.locator("section.watch .messages li.msg")).to_have_count(1)
    await audit(m, "watched chat")

    await s.locator(".chat-actions .confirm button").first.click()
    await s.locator(".chat-actions .confirm button.danger").click()
    await expect(p.locator("form.feedback")).to_be_visible()
    await expect(s.locator("form.feedback")).to_be_visible()
    await audit(p, "patient ended, with feedback")
    await audit(s, "survivor ended, with feedback")

    await m.locator("[role=tab]").nth(1).click()
    await expect(m.locator("section.audit tbody tr").first).to_be_visible()
    await audit(m, "audit log")
    assert len(audit.screens) == 13
    assert not audit.found, audit.report()


async def test_from_sign_in_to_a_sent_message_with_the_keyboard_alone(web, open_page):
    (g,) = web(1)
    steps: list[dict] = []

    async def press(page, key: str, times: int = 1, then: str | None = None) -> None:
        """Press key; ``then``: the screen it leads to, waited for before the focus is looked at."""
        for _ in range(times):
            await page.keyboard.press(key)
        if then:
            await expect(page.locator(then)).to_be_visible()
        state = await focus_is_visible(page)
        steps.append(state)
        assert state["visible"], f"focus not visible after {key}: {state}"

    async def tab_to(page, selector: str, limit: int = 40, key: str = "Tab") -> None:
        for _ in range(limit):
            await press(page, key)
            if await page.evaluate("(sel) => document.activeElement?.matches(sel)", selector):
                return
        raise AssertionError(f"Tab never reached {selector}; last: {steps[-1]}")

    async def keyboard_sign_in(page, role: str, name: str) -> None:
        await expect(page.locator("#role-patient")).to_be_focused()     # the page starts on the first choice
        if role == "survivor":
            await press(page, "ArrowDown")
        await expect(page.locator(f"#role-{role}")).to_be_checked()
        await tab_to(page, "#name")
        await page.keyboard.type(name)
        await press(page, "Enter", then=f".page-{role}")

    # the patient: sign in, choose a diagnosis, Talk now
    p = await open_page(g.url, "patient", reduced_motion="reduce")
    await keyboard_sign_in(p, "patient", "Pat")
    await tab_to(p, ".profile-fields select")
    await press(p, "ArrowDown")
    await expect(p.locator(".profile-fields select").first).to_have_value("breast")
    await tab_to(p, "button.talk-now")
    await press(p, "Enter", then="section.queue")
    await expect(p.locator("#queue-title")).to_be_focused()
    # reduced motion: the waiting pulse stands still
    assert await p.evaluate(
        "getComputedStyle(document.querySelector('.pulse'), '::after').animationName") == "none"

    # the survivor: sign in, choose a diagnosis, switch available, accept with Enter
    s = await open_page(g.url, "survivor", reduced_motion="reduce")
    await keyboard_sign_in(s, "survivor", "Sam")
    await tab_to(s, ".profile-fields select")
    await press(s, "ArrowDown")
    await tab_to(s, "#available", key="Shift+Tab")     # the switch is above the profile
    await press(s, "Space")
    await expect(s.locator("#available")).to_have_attribute("aria-checked", "true")
    accept = s.locator("article.offer button.primary")
    await expect(accept).to_be_focused()          # the offer takes the focus from the availability panel
    assert (await focus_is_visible(s))["visible"]
    await press(s, "Enter")                       # "Connecting you…" keeps the focus on the offer
    await expect(s.locator(".chat form.composer")).to_be_visible()

    # both are in the chat with the focus in the message box: type and press Enter
    for page, text in ((s, "Hello Pat, I'm here."), (p, "Thank you for coming.")):
        box = page.locator(".chat form.composer textarea")
        await expect(box).to_be_focused()
        assert (await focus_is_visible(page))["visible"]
        await page.keyboard.type(text)
        await press(page, "Enter")
    await expect(p.locator(".messages .text")).to_have_text(["Hello Pat, I'm here.", "Thank you for coming."])
    await expect(s.locator(".messages .text")).to_have_text(["Hello Pat, I'm here.", "Thank you for coming."])
    assert len(steps) > 10


async def test_the_honest_wait_talk_later_and_contacts_pass_axe_right_to_left(web, open_page):
    """Issue 14's screens in Arabic: the waiting screen when nobody fits (widen, talk later, crisis lines),
    the patient's pending talk-later request, the survivor's talk-later card, and the contacts list.
    (The same screens are audited in English as the browser tests of test_talk_later.py reach them.)"""
    (g,) = web(1)
    audit = Audit()
    locale = "ar-EG"

    async def finnish_only(page) -> None:
        pick = page.locator("details.pick").nth(1)
        if not await pick.evaluate("d => d.open"):
            await pick.locator("summary").click()
        for box in await pick.locator("input[type=checkbox]:checked").all():
            await box.uncheck()
        await pick.locator("input[value=fi]").check()

    p = await open_page(g.url, "patient", locale=locale)
    await sign_in_as(p, "patient", "Pat")
    await choose_diagnosis(p)
    await finnish_only(p)
    await p.locator("button.talk-now").click()
    await expect(p.locator(".wait-options")).to_be_visible()
    await audit(p, "patient waiting, nobody fits")
    await p.locator("form.later-form textarea").fill("المساء يناسبني")
    await p.locator("form.later-form button[type=submit]").click()
    await expect(p.locator("#later")).to_be_visible()
    await audit(p, "patient talk-later request")

    s = await open_page(g.url, "survivor", locale=locale)
    await sign_in_as(s, "survivor", "Sam")
    settings = s.locator("details.settings")
    if not await settings.evaluate("d => d.open"):
        await settings.locator("summary").click()
    await choose_diagnosis(s)
    await finnish_only(s)
    await s.locator("#available").click()
    card = s.locator("article.later-offer")
    await expect(card).to_be_visible()
    await audit(s, "survivor talk-later card")
    await card.locator("button.primary").click()
    await expect(s.locator(".chat form.composer")).to_be_visible()
    await expect(p.locator(".chat form.composer")).to_be_visible()
    await s.locator(".chat-actions .confirm button").first.click()
    await s.locator(".chat-actions .confirm button.danger").click()
    for page in (p, s):
        await page.locator(".keep-in-touch button").click()
    await expect(s.locator("#contacts li.contact")).to_have_count(1)
    await audit(s, "survivor ended, keep in touch, contacts")
    await p.locator(".ended-note form.feedback button[type=button]").click()
    await expect(p.locator("#contacts li.contact")).to_have_count(1)
    await audit(p, "patient contacts")
    assert len(audit.screens) == 5
    assert not audit.found, audit.report()


@pytest.mark.parametrize("locale", ["en-US", "ar-EG"])
async def test_the_groups_screens_pass_axe(web, open_page, locale):
    """Issue 12's screens, in English and in Arabic: the facilitator's create form and group chat with the
    tools open, a patient's list of groups that fit, the group chat with its pinned message and members,
    waiting for a group, and a moderator's feed with a group flag and the watched group's members."""
    (g,) = web(1)
    audit = Audit()
    m = await open_page(g.url, "moderator", viewport=DESK, locale=locale)
    await sign_in_as(m, "moderator", "Mo")

    f = await open_page(g.url, "facilitator", viewport=DESK, locale=locale)
    await f.locator("#role-survivor").check()
    await f.locator("#facilitator").check()
    await audit(f, "sign-in with the facilitator box")
    await sign_in_as(f, "survivor", "Robin")
    await f.locator("nav.view-switch button[data-view=groups]").click()
    create = f.locator("details.create-group")
    await create.locator("summary").click()
    form = create.locator("form")
    await form.locator("select").first.select_option("breast")
    await form.locator("input[type=text]").first.fill("Circle")
    await form.locator("input[type=checkbox]").check()         # meets weekly: the schedule's fields
    await audit(f, "create a group")
    await form.locator("button[type=submit]").click()
    chat_f = f.locator(".group-chat:visible")
    await expect(chat_f).to_be_visible()
    await chat_f.locator("details.facilitator-tools summary").click()
    await chat_f.locator(".pin-form textarea").fill("Be kind.")
    await chat_f.locator(".pin-form button[type=submit]").click()
    await expect(chat_f.locator(".pinned")).to_be_visible()

    p = await open_page(g.url, "patient", locale=locale)
    await sign_in_as(p, "patient", "Pat")
    await choose_diagnosis(p)
    await p.locator("nav.view-switch button[data-view=groups]").click()
    await p.locator(".find-groups button.show-groups").click()
    await expect(p.locator(".group-list.fit li.group-card")).to_have_count(1)
    await audit(p, "groups that fit")
    await p.locator(".group-list.fit li.group-card button.primary").click()
    chat_p = p.locator(".group-chat:visible")
    await expect(chat_p.locator(".pinned")).to_be_visible()
    await expect(chat_f.locator("li.member")).to_have_count(2)
    await audit(f, "facilitator's group chat with the tools")
    await chat_p.locator("form.composer textarea").fill("Some days I want to end my life.")
    await chat_p.locator("form.composer textarea").press("Enter")
    await expect(p.locator("#resources")).to_be_visible()
    await expect(chat_f.locator(".messages li.msg")).to_have_count(1)
    await audit(p, "patient's group chat with the crisis panel")

    w = await open_page(g.url, "patient 2", locale=locale)
    await sign_in_as(w, "patient", "Ana")
    await choose_diagnosis(w, "lung")
    await w.locator("nav.view-switch button[data-view=groups]").click()
    await w.locator(".find-groups button.find-group").click()
    await expect(w.locator(".group-waiting")).to_be_visible()
    await audit(w, "waiting for a group")

    flag = m.locator(".flag-feed li.flag.group-flag")
    await expect(flag.first).to_be_visible()
    await expect(flag.first.locator(".pill.group")).to_be_visible()
    await audit(m, "moderator feed with a group flag")
    await flag.first.locator("button.primary").click()
    await expect(m.locator("section.watch .member-list li.member")).to_have_count(2)
    await expect(m.locator("section.watch .messages li.msg")).to_have_count(1)
    await audit(m, "watched group")
    assert len(audit.screens) == 8
    assert not audit.found, audit.report()
