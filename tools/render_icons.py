"""Draw the web app icons: gateway/static/icons/icon.svg rendered to icon-192.png and icon-512.png with
Debian's Chromium (run by hand after editing the SVG: .venv/bin/python tools/render_icons.py)."""
import asyncio, pathlib
from playwright.async_api import async_playwright
d = pathlib.Path(__file__).resolve().parents[1] / "gateway" / "static" / "icons"
svg = (d / "icon.svg").read_text()
async def main():
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        for size in (192, 512):
            p = await b.new_page(viewport={"width": size, "height": size})
            await p.set_content(f"<html><body style='margin:0'>{svg.replace('viewBox', f'width={size} height={size} viewBox')}</body></html>")
            await p.wait_for_timeout(200)
            await p.screenshot(path=str(d / f"icon-{size}.png"), omit_background=True)
        await b.close()
asyncio.run(main())
