"""The web UI in real headless Chromium against a real server: sign in with the key, upload training data and see
its check, start a tiny job and watch it finish (status, events, loss curve), open its report, then chat with the
tuned model.

docs/ui-jobs.png is this test's screenshot:
    TUNEFORGE_UI_SCREENSHOT=docs/ui-jobs.png python3 -m pytest tests/serve/test_ui.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_fine_tuning_recovery import KEY, free_port, start_server

from helpers import toy_rows

FAST = {"train.precision": "fp32", "train.learning_rate": 0.01, "train.save_steps": 3}


def browser_or_skip() -> None:
    from browser import chromium_paths

    if chromium_paths() is None:
        if os.environ.get("TUNEFORGE_REQUIRE_BROWSER"):
            pytest.fail("TUNEFORGE_REQUIRE_BROWSER is set (.ci/run) but chromium or chromedriver is not installed")
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver); CI runs this test")


def test_sign_in_upload_train_watch_and_chat(tmp_path: Path, tiny_model_dir: Path) -> None:
    browser_or_skip()
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from browser import full_page_screenshot, open_browser

    data, port = tmp_path / "data", free_port()
    data.mkdir()
    rows = tmp_path / "toy.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in toy_rows(60)))
    server = start_server(data, tiny_model_dir, port)
    driver = open_browser(width=1200, height=900)
    # the job panel is drawn again every 2 s: an element read while it is replaced is stale, read it again
    wait = WebDriverWait(
        driver, 180, poll_frequency=0.3, ignored_exceptions=[NoSuchElementException, StaleElementReferenceException]
    )

    def text(element_id: str) -> str:
        return str(wait.until(lambda d: d.find_element(By.ID, element_id).text or None))

    try:
        driver.get(f"http://127.0.0.1:{port}/")  # redirects to the UI; the page itself needs no key
        driver.find_element(By.ID, "key").send_keys("wrong")
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait.until(lambda d: "Sign-in failed" in d.find_element(By.ID, "login-error").text)
        key = driver.find_element(By.ID, "key")
        key.clear()
        key.send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait.until(lambda d: d.find_element(By.ID, "chat").is_displayed())

        driver.find_element(By.ID, "tab-jobs").click()
        driver.find_element(By.ID, "file").send_keys(str(rows))
        driver.find_element(By.ID, "upload").click()
        wait.until(lambda d: "processed" in d.find_element(By.ID, "upload-result").text)
        assert "60 chat records valid" in text("validation")
        driver.find_element(By.ID, "suffix").send_keys("ui")
        driver.find_element(By.ID, "epochs").send_keys("3")
        driver.find_element(By.CSS_SELECTOR, "#job-form summary").click()  # tuneforge's own options
        driver.find_element(By.ID, "options").send_keys(json.dumps(FAST))
        driver.find_element(By.ID, "create").click()
        wait.until(lambda d: "succeeded" in d.find_element(By.ID, "job-status").text)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#loss-curve polyline"))  # the loss curve is drawn
        wait.until(lambda d: "The job has successfully completed" in d.find_element(By.ID, "events").text)
        assert "Fine-tuning job started" in text("events") and "held-out examples" in text("events")
        job_id = text("job-status").split(":")[0]
        full_page_screenshot(driver, tmp_path / "ui-jobs.png")
        if os.environ.get("TUNEFORGE_UI_SCREENSHOT"):
            full_page_screenshot(driver, Path(os.environ["TUNEFORGE_UI_SCREENSHOT"]))

        wait.until(lambda d: d.find_element(By.ID, "job-report")).click()  # the run's report, in a sandboxed frame
        wait.until(lambda d: d.find_element(By.ID, "report").is_displayed())
        driver.switch_to.frame(driver.find_element(By.ID, "report"))
        assert wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text) == f"tuneforge report: {job_id}"
        driver.switch_to.default_content()

        driver.find_element(By.ID, "tab-chat").click()
        tuned = wait.until(  # the picker is filled again once the job is done
            lambda d: [o.text for o in Select(d.find_element(By.ID, "model")).options if o.text.startswith("ft:")]
        )
        assert tuned and tuned[0].endswith(":ui:" + tuned[0].rsplit(":", 1)[1])
        Select(driver.find_element(By.ID, "model")).select_by_visible_text(tuned[0])
        driver.find_element(By.ID, "prompt").send_keys("Item 3: what colour?")
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='true']"))
        assert driver.find_element(By.CSS_SELECTOR, ".msg.user").text == "user: Item 3: what colour?"
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1200
    finally:
        driver.quit()
        server.kill()
        server.wait()
    assert (tmp_path / "ui-jobs.png").stat().st_size > 10_000
