"""The moderator's page and the learned screening: a model flag says where it came from and can be
marked a true or false alarm; a screening backlog shows as a notice on the feed."""
from __future__ import annotations

import pytest
from playwright.async_api import expect

from support.webpage import DESK, matched_pair, screenshot, send, sign_in

pytestmark = pytest.mark.browser

INDIRECT_CRISIS = "I've been saving up my morphine for weeks. Tonight I'm going to take all of it."


async def test_model_flag_shows_its_source_and_is_resolved_as_a_true_alarm(web, open_page, moderators):
    (g,) = web(1)
    moderators(1)
    moderator = await open_page(g.url, "moderator", viewport=DESK)
    await sign_in(moderator, "moderator", "Mo")
    await expect(moderator.get_by_text("No open flags")).to_be_visible()
    patient, _survivor = await matched_pair(open_page, g.url, g.url)

    await send(patient, INDIRECT_CRISIS)
    flag = moderator.locator(".flag-feed li.flag")
    await expect(flag).to_have_count(1, timeout=15000)
    await expect(flag.locator(".category")).to_have_text("Crisis")
    await expect(flag.locator(".pill.source")).to_contain_text("model")
    await expect(patient.locator("#resources")).to_be_visible()
    await expect(moderator.locator(".screening-behind")).to_be_hidden()
    await screenshot(moderator, "moderator-model-flag.png")

    await flag.get_by_label("Resolution").fill("Called the crisis line with them.")
    await flag.get_by_label("Was this a true or a false alarm?").select_option("true_alarm")
    await flag.get_by_role("button", name="Resolve").click()
    await expect(moderator.get_by_text("No open flags")).to_be_visible()
    await moderator.get_by_role("tab", name="Audit log").click()
    await expect(moderator.locator("section.audit tbody tr").filter(has_text="[true_alarm]")).to_have_count(1)


async def test_a_screening_backlog_shows_as_a_notice_on_the_feed(web, open_page):
    (g,) = web(1, AFTERTALK_SCREENING_BEHIND_S=1)          # no worker runs: messages wait
    moderator = await open_page(g.url, "moderator", viewport=DESK)
    await sign_in(moderator, "moderator", "Mo")
    patient, _survivor = await matched_pair(open_page, g.url, g.url)
    await send(patient, "My scan is on Thursday.")
    notice = moderator.locator(".screening-behind")
    await expect(notice).to_be_visible(timeout=10000)
    await expect(notice).to_contain_text("Screening is behind")
