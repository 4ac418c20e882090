"""The web UI's Annotate page in real headless Chromium against a real server (`tuneforge serve --annotate`): two
answers of the tiny model side by side, judged by key and by button; the pairs land in the preference file and the
agreement view reads the summary.

docs/ui-annotate.png is this test's screenshot:
    TUNEFORGE_UI_SCREENSHOT=docs/ui-annotate.png python3 -m pytest tests/serve/test_ui_annotate.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from test_fine_tuning_recovery import KEY, free_port
from test_ui import browser_or_skip


def serve_annotating(model: Path, prompts: Path, out: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tuneforge", "serve", "--model", str(model), "--port", str(port),
               "--annotate", str(prompts), "--preferences", str(out)]  # fmt: skip
    server = subprocess.Popen(command, env={**os.environ, "TUNEFORGE_API_KEY": KEY}, stdout=subprocess.DEVNULL,
                              stderr=log.open("ab"))  # fmt: skip
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)
    server.kill()
    raise AssertionError(log.read_text()[-2000:])


def test_judging_two_answers_on_the_annotate_page(tmp_path: Path, tiny_model_dir: Path) -> None:
    browser_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from browser import full_page_screenshot, open_browser

    prompts, out, port = tmp_path / "prompts.txt", tmp_path / "prefs.jsonl", free_port()
    prompts.write_text("Item 1: what colour?\nItem 2: what colour?\nItem 3: what colour?\n")
    server = serve_annotating(tiny_model_dir, prompts, out, port, tmp_path / "server.log")
    driver = open_browser(width=1200, height=900)
    wait = WebDriverWait(driver, 120, poll_frequency=0.3)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait.until(lambda d: d.find_element(By.ID, "chat").is_displayed())
        driver.find_element(By.ID, "tab-annotate").click()
        driver.find_element(By.ID, "annotator").send_keys("ann")
        driver.find_element(By.ID, "annotate-start").click()
        wait.until(lambda d: "Prompt 1 of 3" in d.find_element(By.ID, "annotate-status").text)
        assert "Item 1: what colour?" in driver.find_element(By.ID, "annotate-prompt").text
        left = driver.find_element(By.ID, "answer-left").text
        assert left and left != driver.find_element(By.ID, "answer-right").text
        if os.environ.get("TUNEFORGE_UI_SCREENSHOT"):
            full_page_screenshot(driver, Path(os.environ["TUNEFORGE_UI_SCREENSHOT"]))
        driver.find_element(By.TAG_NAME, "body").send_keys("1")  # the key for "left is better"
        wait.until(lambda d: "Prompt 2 of 3" in d.find_element(By.ID, "annotate-status").text)
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
        wait.until(lambda d: "Prompt 3 of 3" in d.find_element(By.ID, "annotate-status").text)
        driver.find_element(By.CSS_SELECTOR, "[data-judgement='tie']").click()
        wait.until(lambda d: "All 3 prompts judged by ann" in d.find_element(By.ID, "annotate-status").text)
        driver.find_element(By.ID, "annotate-summary").click()
        wait.until(lambda d: "ann:" in d.find_element(By.ID, "annotate-agreement").text)
    finally:
        driver.quit()
        server.kill()
        server.wait()
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 2  # the tie is no pair
    assert (
        pairs[0]["prompt"] == [{"role": "user", "content": "Item 1: what colour?"}] and pairs[0]["annotator"] == "ann"
    )
    # what the page showed on the left was chosen (the tiny model's bytes compared as the browser renders text)
    shown = "".join(left.split())
    assert (
        "".join(pairs[0]["chosen"][0]["content"].split())[:8]
        == shown[:8]
        != "".join(pairs[0]["rejected"][0]["content"].split())[:8]
    )
