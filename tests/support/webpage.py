"""What a person does in the web client, for the browser tests: sign in, become available, press
Talk now, accept, send.  Everything goes through labels and roles, as a screen reader would."""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from playwright.async_api import expect

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESK = {"width": 1100, "height": 860}
PROFILE_LABEL = "Breast cancer"
expect.set_options(timeout=10_000)


async def sign_in(page: Any, role: str, name: str) -> None:
    await page.locator(f"#role-{role}").check()
    await page.get_by_label("A first name or pseudonym").fill(name)
    await page.get_by_role("button", name="Continue").click()
    await expect(page.locator(f".page-{role}")).to_be_visible()


async def open_profile(page: Any) -> None:
    """Unfold the survivor's profile section (it starts unfolded only when there is no profile yet)."""
    settings = page.locator("details.settings")
    if not await settings.evaluate("d => d.open"):
        await settings.locator("summary").click()


async def become_available(page: Any) -> None:
    await open_profile(page)
    await page.get_by_label("Your diagnosis").select_option(label=PROFILE_LABEL)
    switch = page.get_by_role("switch", name="Available for new chats")
    await switch.click()
    await expect(switch).to_have_attribute("aria-checked", "true")


async def talk_now(page: Any) -> None:
    await page.get_by_label("Your diagnosis").select_option(label=PROFILE_LABEL)
    await page.get_by_role("button", name="Talk now").click()
    await expect(page.locator("#queue-position")).to_have_text(re.compile(r"in line"))


async def matched_pair(open_page: Callable[..., Awaitable[Any]], patient_url: str, survivor_url: str,
                       patient: str = "Pat", survivor: str = "Sam", patient_ws: Any = None) -> tuple[Any, Any]:
    """A survivor who is available and a patient who pressed Talk now, matched and in the chat.
    ``patient_ws``: a WebSocket route handler between the patient's page and the gateway."""
    s = await open_page(survivor_url, "survivor")
    await sign_in(s, "survivor", survivor)
    await become_available(s)
    p = await open_page(patient_url, "patient", route_ws=patient_ws)
    await sign_in(p, "patient", patient)
    await talk_now(p)
    offer = s.locator("article.offer")
    await expect(offer).to_be_visible()
    await offer.get_by_role("button", name="Accept").click()
    await expect(p.get_by_role("heading", name=f"You are talking with {survivor}")).to_be_visible()
    await expect(s.get_by_role("heading", name=f"You are talking with {patient}")).to_be_visible()
    return p, s


async def send(page: Any, text: str) -> None:
    box = page.locator(".chat:visible form.composer textarea")
    await box.fill(text)
    await box.press("Enter")


async def seqs(page: Any) -> list[int]:
    """The seq of every message element on the page's visible chat, in page order."""
    return await page.locator(".chat:visible .messages li.msg[data-seq]").evaluate_all(
        "els => els.map(e => Number(e.dataset.seq))")


async def texts(page: Any) -> list[str]:
    return await page.locator(".chat:visible .messages li.msg .text").all_text_contents()


async def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / name), full_page=False, animations="disabled", caret="initial")


async def fits_the_screen(page: Any) -> bool:
    """No sideways scrolling: everything fits the viewport's width (a 375-390 px phone)."""
    return await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
