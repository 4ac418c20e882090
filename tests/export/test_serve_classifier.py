"""Every kind of run served: a classifier answers POST /v1/classifications and chat on its name (the label, with the
probabilities in `classification`), beside a chat run, in the terminal chat too; its scores are evaluation's. A whole
fine-tuned model is served beside adapters, and refused with the figures when it does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import load_config
from tuneforge.export.runs import open_run, reference_model
from tuneforge.generation import SamplingParams
from tuneforge.launch import serving_app
from tuneforge.serve import create_app
from tuneforge.serve.classifiers import ClassifierEngine
from tuneforge.train.classify import Labelled, probabilities

TEXTS = ["Order 3: great, arrived on day 2.", "Order 9: kaputt, arrived on day 1."]


def test_a_classifier_answers_as_evaluation_scores(classifier_run: Path) -> None:
    classifiers = ClassifierEngine([classifier_run])
    try:
        client = TestClient(create_app([], classifiers=classifiers))
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["reviews"]
        body = client.post("/v1/classifications", json={"model": "reviews", "input": TEXTS}).json()
        assert [d["index"] for d in body["data"]] == [0, 1] and body["usage"]["prompt_tokens"] > 0
        model, tokenizer = reference_model(open_run(classifier_run))  # as `tuneforge evaluate` loads and scores it
        ids = tokenizer(TEXTS, add_special_tokens=True, truncation=True, max_length=512)["input_ids"]
        expected = probabilities(model, [Labelled(list(i), 0, 1.0) for i in ids], 8, int(tokenizer.pad_token_id), "cpu")
        labels = sorted(body["data"][0]["probabilities"])
        served = np.array([[d["probabilities"][label] for label in labels] for d in body["data"]])
        assert np.abs(served - expected).max() < 1e-4 and [d["label"] for d in body["data"]] == ["pos", "neg"]
        ask = {"model": "reviews", "messages": [{"role": "user", "content": TEXTS[1]}]}
        chat = client.post("/v1/chat/completions", json=ask).json()
        assert chat["choices"][0]["message"]["content"] == "neg" and chat["classification"]["label"] == "neg"
        streamed = client.post("/v1/chat/completions", json={**ask, "stream": True}).text
        chunks = [json.loads(line[6:]) for line in streamed.split("\n\n") if line.startswith("data: {")]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "neg"
        assert chunks[-1]["classification"]["probabilities"]["neg"] > 0.5
        missing = client.post("/v1/classifications", json={"model": "toy", "input": "x"})
        assert missing.status_code == 404 and "classifiers: ['reviews']" in missing.json()["error"]["message"]
        assert client.post("/v1/classifications", json={"model": "reviews", "input": []}).status_code == 400
    finally:
        classifiers.close()


def test_a_classifier_is_served_beside_a_chat_run(classifier_run: Path, trained_run: Path) -> None:
    application = serving_app([trained_run, classifier_run], load_config(None, []), None, None, None, None)
    try:
        client = TestClient(application)
        assert {m["id"] for m in client.get("/v1/models").json()["data"]} >= {"toy", "reviews"}
        toy = {"model": "toy", "messages": [{"role": "user", "content": "Item 3: what colour?"}], "max_tokens": 4}
        assert "classification" not in client.post("/v1/chat/completions", json=toy).json()
        one = client.post("/v1/classifications", json={"model": "reviews", "input": TEXTS[0]}).json()
        assert one["data"][0]["label"] == "pos"
    finally:
        application.state.engine.close()


def test_the_terminal_chat_shows_a_classifiers_probabilities(classifier_run: Path, full_run: Path) -> None:
    done = CliRunner().invoke(app, ["chat", str(classifier_run)], input=TEXTS[0] + "\n/exit\n")
    assert done.exit_code == 0, done.output
    assert "pos  (pos 0." in done.output and ", neg 0." in done.output
    whole = CliRunner().invoke(app, ["chat", str(full_run), "--max-tokens", "6"], input="Item 3: what colour?\n/exit\n")
    assert whole.exit_code == 0 and "error" not in whole.output, whole.output  # a whole fine-tuned model chats too


def test_a_whole_fine_tuned_model_is_served_beside_adapters(trained_run: Path, full_run: Path, monkeypatch) -> None:
    from tuneforge.errors import RunError
    from tuneforge.serve import combined
    from tuneforge.serve.engine import Engine

    application = serving_app([trained_run, full_run], load_config(None, []), None, None, None, None)
    ask = {"messages": [{"role": "user", "content": "Item 3: what colour?"}], "max_tokens": 8, "temperature": 0}
    try:
        client = TestClient(application)
        assert {m["id"] for m in client.get("/v1/models").json()["data"]} >= {"toy", "whole"}
        answer = client.post("/v1/chat/completions", json={**ask, "model": "whole"}).json()
        alone = Engine([], 1, base=str(full_run / "model"))  # the same whole model, served by itself
        try:
            expected = alone.complete(alone.base_id, ask["messages"], SamplingParams(max_new_tokens=8)).text
        finally:
            alone.close()
        assert answer["model"] == "whole" and answer["choices"][0]["message"]["content"] == expected
        assert client.post("/v1/chat/completions", json={**ask, "model": "toy"}).status_code == 200
        assert client.get("/v1/models/whole/report").status_code == 404  # its run, not evaluated
    finally:
        application.state.engine.close()
    need = combined.serving_bytes(full_run)
    assert need == 4 * sum(p.numel() for p in reference_model(open_run(full_run))[0].parameters())
    monkeypatch.setattr(combined.psutil, "virtual_memory", lambda: type("M", (), {"available": need})())
    with pytest.raises(RunError, match=r"need 0\.\d+ GiB served \(whole"):
        serving_app([full_run], load_config(None, []), None, None, None, None)


def test_the_web_chat_lists_a_classifiers_probabilities(classifier_run: Path, tmp_path: Path) -> None:
    """In real headless Chromium against `tuneforge serve` (no key): the answer is the label, the classes under it."""
    import subprocess
    import sys
    import time

    import httpx

    sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
    from test_ui import browser_or_skip

    browser_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from test_fine_tuning_recovery import free_port

    from browser import open_browser

    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "tuneforge", "serve", str(classifier_run), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    driver = None
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        driver = open_browser()
        wait = WebDriverWait(driver, 60, poll_frequency=0.3)
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()  # no key on this server
        wait.until(lambda d: d.find_element(By.ID, "chat").is_displayed())
        Select(driver.find_element(By.ID, "model")).select_by_visible_text("reviews")
        driver.find_element(By.ID, "prompt").send_keys(TEXTS[1])
        driver.find_element(By.ID, "send").click()
        shares = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".probabilities div"))
        assert [s.text.split()[0] for s in shares] == ["neg", "pos"]  # likeliest first
        assert driver.find_element(By.CSS_SELECTOR, ".msg.assistant span").text == "neg"
    finally:
        if driver is not None:
            driver.quit()
        server.kill()
        server.wait()
        log.close()
