"""Headless Chromium for the report tests and the README's screenshots (Debian: apt-get install chromium
chromium-driver; .ci/run installs them).

    python3 tests/browser.py runs/contracts/report.html docs/report-contracts.png   # a full-page screenshot
"""

from __future__ import annotations

import base64
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# The flags keep Chromium from calling home: this machine's network is closed, and a report needs none.
FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) executables, or None when Chromium or its driver is not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def open_browser(width: int = 1200, height: int = 900) -> Any:
    """A Selenium-driven headless Chromium with a fresh profile (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError("Chromium is not installed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in [
        *FLAGS,
        f"--user-data-dir={tempfile.mkdtemp(prefix='tf-chromium-')}",
        f"--window-size={width},{height}",
    ]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))


def full_page_screenshot(driver: Any, png: Path) -> None:
    """Save the whole page, below the window's fold too, as one PNG (Chrome DevTools' own capture)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(base64.b64decode(shot["data"]))


def main(html: str, png: str) -> None:
    driver = open_browser()
    try:
        driver.get(Path(html).resolve().as_uri())
        full_page_screenshot(driver, Path(png))
    finally:
        driver.quit()
    from PIL import Image

    with Image.open(png) as image:  # 256 colours: a third of the bytes, and the page has few colours anyway
        small = image.convert("RGB").quantize(256)
    small.save(png, optimize=True)
    print(f"wrote {png}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
