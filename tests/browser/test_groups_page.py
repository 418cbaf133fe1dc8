"""Issue 12 in the web client, in headless Chromium against two real gateway processes on one Redis:
facilitated groups.  A facilitator (demo sign-in with the facilitator box) creates a weekly group of
three; a patient finds it from the profile she entered for talk-now and joins on the other gateway; a
volunteer presses "Find a group for me" and is put in it; they talk both ways, the member lists show who
is online, the pinned message is at the top; a fourth person finds the group full and waits on its
waitlist, and becomes a member by herself when the patient leaves (the others see her leave and the
newcomer join).  A facilitator mutes a member: the muted person's message is refused with a kind notice
and nobody else ever sees it.  Screenshots: docs/screenshots/groups-list.png, group-chat.png,
group-facilitator.png."""
from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from support.webpage import (
    AXE,
    DESK,
    PROFILE_LABEL,
    axe_violations,
    create_group,
    group_send,
    group_texts,
    open_groups,
    open_profile,
    screenshot,
    sign_in,
    sign_in_facilitator,
)

pytestmark = pytest.mark.browser
TITLE = "Breast cancer, Tuesday evenings"
DESCRIPTION = "A small circle to share how treatment is going. <b>Be kind</b>."
GUIDELINES = "Be kind. What is said here stays here."


async def audit(page, screen: str) -> None:
    if not AXE.exists():
        return
    found = await axe_violations(page)
    assert not found, f"{screen}: {found}"


async def members_online(page) -> dict[str, bool]:
    """The member list of the open group chat: name -> shown as online."""
    return await page.locator(".group-chat:visible .member-list li.member").evaluate_all(
        "els => Object.fromEntries(els.map(e => [e.dataset.name, e.classList.contains('on')]))")


async def patient_lists_groups(page) -> None:
    await page.get_by_label("Your diagnosis").select_option(label=PROFILE_LABEL)
    await open_groups(page)
    await page.get_by_role("button", name="Show groups that fit me").click()


async def volunteer_finds_a_group(open_page, url: str, name: str):
    """A volunteer signs in, gives the diagnosis of their profile and presses "Find a group for me";
    returns their page and its group chat."""
    page = await open_page(url, "survivor")
    await sign_in(page, "survivor", name)
    await open_profile(page)
    await page.get_by_label("Your diagnosis").select_option(label=PROFILE_LABEL)
    await open_groups(page)
    await page.get_by_role("button", name="Find a group for me").click()
    return page, page.locator(".group-chat:visible")


async def test_three_people_in_a_group_on_two_gateways_and_the_waitlist(web, open_page):
    g1, g2 = web(2)
    # the facilitator (gateway 1) opens a weekly group for three
    robin = await open_page(g1.url, "facilitator", viewport=DESK)
    await sign_in_facilitator(robin, "Robin")
    await expect(robin.locator("#who")).to_contain_text("survivor, facilitator")
    await open_groups(robin)
    await create_group(robin, TITLE, capacity=3, description=DESCRIPTION, weekly=("Tuesday", "18:00"))
    chat_r = robin.locator(".group-chat:visible")
    await expect(chat_r.locator(".members summary")).to_have_text("Members: 1 of 3, 1 online")
    await chat_r.locator("details.facilitator-tools summary").click()
    await chat_r.get_by_label("Pinned message (for example the group's guidelines)").fill(GUIDELINES)
    await chat_r.get_by_role("button", name="Pin", exact=True).click()
    await expect(chat_r.locator(".pinned .pinned-text")).to_have_text(GUIDELINES)

    # a patient (gateway 2) lists the groups that fit the profile she entered for talk-now
    pat = await open_page(g2.url, "patient")
    await sign_in(pat, "patient", "Pat")
    await patient_lists_groups(pat)
    card = pat.locator(".group-list.fit li.group-card")
    await expect(card).to_have_count(1)
    await expect(card.get_by_role("heading")).to_have_text(TITLE)
    await expect(card.locator(".description")).to_have_text(DESCRIPTION)     # as text, never markup
    assert await card.locator(".description b").count() == 0
    await expect(card.locator(".count")).to_have_text("1 of 3 members")
    await expect(card.locator(".led")).to_have_text("Led by Robin")
    # the next session in the viewer's own time and words (Intl): a Tuesday, at 18:00 in Robin's zone
    await expect(card.locator(".next-session")).to_contain_text(re.compile(r"Next session: Tuesday"))
    iso = await card.locator(".next-session time").get_attribute("datetime")
    assert iso and re.match(r"^\d{4}-\d\d-\d\dT18:00(:00)?[+-]\d\d:\d\d$", iso), iso
    await screenshot(pat, "groups-list.png")
    await audit(pat, "groups list")
    await card.get_by_role("button", name="Join").click()
    chat_p = pat.locator(".group-chat:visible")
    await expect(chat_p.get_by_role("heading", level=2)).to_have_text(TITLE)
    await expect(chat_p.locator(".pinned .pinned-text")).to_have_text(GUIDELINES)     # shown to every joiner
    await expect(robin.locator(".group-chat:visible .sysline")).to_have_text(["Pat joined the group."])

    # a volunteer (gateway 1) presses "Find a group for me" with her availability profile
    sam, chat_s = await volunteer_finds_a_group(open_page, g1.url, "Sam")
    await expect(chat_s.get_by_role("heading", level=2)).to_have_text(TITLE)

    # presence: everyone sees the three members online, on both gateways
    for page in (robin, pat, sam):
        await expect(page.locator(".group-chat:visible .members summary")).to_have_text("Members: 3 of 3, 3 online")
    assert await members_online(pat) == {"Robin": True, "Pat": True, "Sam": True}
    await expect(chat_p.locator("li.member[data-name=Robin]")).to_contain_text("survivor, facilitator")

    # talk both ways across the two gateways; each message shows its author's pseudonym and role
    await group_send(pat, "Hello everyone, I start chemo next week.")
    await expect(chat_s.locator(".messages li.msg.theirs .who")).to_have_text(["Pat · patient"])
    await group_send(sam, "Welcome Pat. I remember that week well.")
    await group_send(robin, "Glad you are both here.")
    for page in (robin, pat, sam):
        await expect(page.locator(".group-chat:visible .messages li.msg .text")).to_have_text([
            "Hello everyone, I start chemo next week.", "Welcome Pat. I remember that week well.",
            "Glad you are both here."])
    await expect(chat_p.locator(".messages li.msg .who")).to_have_text(
        ["You", "Sam · survivor", "Robin · survivor, facilitator"])
    await expect(chat_p.locator(".messages li.msg.mine .status")).to_have_text(["Sent"])
    await screenshot(pat, "group-chat.png")
    await audit(pat, "group chat")

    # a fourth person finds the group full and goes on its waitlist
    ana = await open_page(g2.url, "patient 2")
    await sign_in(ana, "patient", "Ana")
    await patient_lists_groups(ana)
    card_a = ana.locator(".group-list.fit li.group-card")
    await expect(card_a.locator(".pill.full")).to_have_text("Full")
    await expect(card_a.locator(".count")).to_have_text("3 of 3 members")
    await card_a.get_by_role("button", name="Join the waitlist").click()
    await expect(ana.locator(".groups-note")).to_contain_text("You are number 1 on its waitlist")
    await expect(ana.locator(".group-list.mine .waitlist")).to_contain_text("You are number 1 on the waitlist")
    await audit(ana, "group full, on the waitlist")

    # Pat leaves: the others see it, and Ana becomes a member by herself
    await chat_p.get_by_role("button", name="Leave the group").click()
    await chat_p.get_by_role("button", name="Yes, leave").click()
    await expect(pat.locator(".groups-note")).to_have_text(f"You left {TITLE}.")
    for page in (robin, sam):
        await expect(page.locator(".group-chat:visible .sysline").last).to_have_text("Ana joined the group.")
        await expect(page.locator(".group-chat:visible .sysline")).to_contain_text(["Pat left the group."])
        await expect(page.locator(".group-chat:visible li.member[data-name=Pat]")).to_have_count(0)
    chat_a = ana.locator(".group-chat:visible")
    await expect(chat_a.get_by_role("heading", level=2)).to_have_text(TITLE)
    await expect(ana.locator(".groups-note")).to_have_text(f"A place opened: you are now a member of {TITLE}.")
    await expect(chat_a.locator(".pinned .pinned-text")).to_have_text(GUIDELINES)
    await expect(chat_a.locator(".members summary")).to_have_text("Members: 3 of 3, 3 online")
    assert set(await members_online(ana)) == {"Robin", "Sam", "Ana"}
    assert await group_texts(ana) == []          # a member reads what is said after joining
    await group_send(ana, "Thank you for having me.")
    await expect(chat_s.locator(".messages li.msg .text").last).to_have_text("Thank you for having me.")
    await expect(chat_r.locator(".messages li.msg .text").last).to_have_text("Thank you for having me.")
    # what Pat wrote stays in the transcript under her name
    await expect(chat_s.locator(".messages li.msg.theirs .who").first).to_have_text("Pat · patient")


async def test_a_facilitator_mutes_a_member_whose_message_nobody_sees(web, open_page):
    g1, g2 = web(2)
    robin = await open_page(g1.url, "facilitator", viewport=DESK)
    await sign_in_facilitator(robin, "Robin")
    await open_groups(robin)
    chat_r = await create_group(robin, "Breast cancer, living with it day to day", capacity=8)

    sam, chat_s = await volunteer_finds_a_group(open_page, g2.url, "Sam")
    await expect(chat_s.get_by_role("heading", level=2)).to_have_text("Breast cancer, living with it day to day")
    await group_send(sam, "Hi, glad to find this group.")
    await expect(chat_r.locator(".messages li.msg .text")).to_have_text(["Hi, glad to find this group."])
    # Sam is not a facilitator: no tools
    await expect(chat_s.locator("details.facilitator-tools")).to_be_hidden()

    tools = chat_r.locator("details.facilitator-tools")
    await tools.locator("summary").click()
    await expect(tools.get_by_label("Mute a member")).to_have_value("Sam")
    await tools.get_by_label("For how long").select_option("15")
    await tools.get_by_role("button", name="Mute", exact=True).click()
    await expect(tools.locator("p[role=status]")).to_have_text("Done: the mute is set.")
    await expect(chat_r.locator("li.member[data-name=Sam] .pill")).to_contain_text("muted until")
    await chat_r.evaluate("el => el.scrollIntoView({block: 'start'})")
    await screenshot(robin, "group-facilitator.png")
    await audit(robin, "facilitator tools")

    # the muted member is told kindly, and a message they send is refused and never delivered
    await expect(chat_s.locator(".mute-note")).to_contain_text(
        "A facilitator has paused your messages in this group until")
    await group_send(sam, "Why was I muted?")
    mine = chat_s.locator(".messages li.msg.mine").last
    await expect(mine).to_have_attribute("data-state", "failed")
    await expect(mine.locator(".status")).to_have_text(
        re.compile(r"^Not sent: your messages are paused for about 1[45] minutes$"))
    await audit(sam, "muted member")
    await group_send(robin, "Let us take a short pause, everyone.")
    await expect(chat_s.locator(".messages li.msg.theirs .text").last).to_have_text(
        "Let us take a short pause, everyone.")
    assert "Why was I muted?" not in await group_texts(robin)

    # lifting the mute lets Sam write again
    await tools.get_by_role("button", name="Lift the mute").click()
    await expect(chat_s.locator(".mute-note")).to_have_text("You can write in this group again.")
    await group_send(sam, "Thank you.")
    await expect(chat_r.locator(".messages li.msg .text").last).to_have_text("Thank you.")
    assert await group_texts(robin) == [
        "Hi, glad to find this group.", "Let us take a short pause, everyone.", "Thank you."]
