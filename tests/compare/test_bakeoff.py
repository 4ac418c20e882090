"""The bake-off end to end on the tiny model: every approach (a fake retriever stands in for the index), skipping
with reasons, answers and timings reused, the files and the report section it writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tuneforge.compare import compare
from tuneforge.compare.approaches import FewShot, question_of
from tuneforge.compare.raft import holds_answer, raft_rows
from tuneforge.data.records import chat_prompts
from tuneforge.rag.answer import Source
from tuneforge.rundir import COMPARE, COMPARE_DIR, REPORT, read_jsonl

from helpers import toy_rows

QUIET = lambda *a, **k: None  # noqa: E731


class FakeRetriever:
    """Passages about the toy items: the one about the asked item holds its answer; the others are distractors."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        rows = toy_rows(60)
        self.texts = [f"Record {i}: {r['messages'][-1]['content']}" for i, r in enumerate(rows)]

    def search(self, question: str, k: int) -> tuple[list[Source], str]:
        self.asked.append(question)
        item = int(question.split(":")[0].split()[-1])
        order = [item] + [i for i in range(len(self.texts)) if i != item]
        return [
            Source(n, f"items/{i}.txt", 1, 1, None, self.texts[i], 1.0 / n, None)
            for n, i in enumerate(order[:k], start=1)
        ], ""


@pytest.fixture(scope="module")
def bakeoff(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, toy_data: Path):
    from tuneforge.config import load_config

    cfg = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.path={toy_data}",
            f"output_dir={tmp_path_factory.mktemp('runs')}",
            "name=toy",
            "data.test_size=0.2",  # 12 test examples: enough for the pairwise tests (at least 10)
            "train.epochs=2",
            "train.batch_size=8",
            "train.learning_rate=0.01",
            "train.precision=fp32",
            "evaluate.max_new_tokens=16",
            "evaluate.bootstrap=200",
            "rag.top_k=2",
            "rag.context_tokens=200",
            "compare.latency_requests=3",
            "compare.fewshot_k=2",
        ],
    )
    retriever = FakeRetriever()
    result = compare(cfg, log=QUIET, retriever=retriever)
    return cfg, result, retriever


def test_every_approach_is_measured_with_intervals_costs_and_advice(bakeoff) -> None:
    cfg, result, _ = bakeoff
    data = json.loads((cfg.run_dir / COMPARE).read_text())
    assert data == json.loads(json.dumps(result.data))
    assert list(data["approaches"]) == ["prompt", "fewshot", "rag", "finetune", "finetune+rag"]
    assert data["skipped"] == {}
    n = data["n"]
    assert n == len(read_jsonl(cfg.run_dir / "data" / "test.jsonl"))
    for name, row in data["approaches"].items():
        metric = data["metric"]
        low, high = row["intervals"][metric]
        assert low <= row["scores"][metric] <= high, name
        assert row["latency"]["requests"] == 3 and 0 < row["latency"]["p50"] <= row["latency"]["p95"]
        assert row["tokens"]["prompt"] > 0 and row["running"]["seconds_per_1k"] > 0
        assert row["running"]["cost_per_1k"] == pytest.approx(row["running"]["seconds_per_1k"] / 3600 * 0.10, abs=1e-4)
    # the fine-tuned models cost training; the base model's approaches cost nothing before the first request
    assert data["approaches"]["finetune"]["one_off"]["training"]["seconds"] > 0
    assert data["approaches"]["prompt"]["one_off"]["seconds"] == 0
    assert len(data["pairs"]) == 10  # every two of five approaches, paired on the same resamples
    advice = data["advice"]
    assert advice["recommended"] in advice["candidates"]
    assert advice["findings"][0]["rule"] == "recommendation"
    # the fake's passages hold every answer
    assert data["facts"]["answers_in_documents"] == 1.0


def test_prompts_are_saved_and_differ_as_the_approaches_say(bakeoff) -> None:
    cfg, result, retriever = bakeoff
    rows = read_jsonl(cfg.run_dir / COMPARE_DIR / "prompts.jsonl")
    first = rows[0]
    question = question_of(first["prompt"]["messages"])
    assert first["finetune"]["messages"] == first["prompt"]["messages"]  # the example's own messages
    rag_user = first["rag"]["messages"][-1]["content"]
    assert rag_user.startswith("Sources:") and rag_user.endswith(f"Question: {question}")
    assert (
        first["rag"]["sources"] == [f"items/{question.split(':')[0].split()[-1]}.txt", "items/0.txt"]
        or len(first["rag"]["sources"]) == 2
    )
    assert first["finetune+rag"]["messages"] == first["rag"]["messages"]
    # few-shot: k earlier turns from the train split only, never the test question itself
    shots = [m for m in first["fewshot"]["messages"] if m["role"] == "user"][:-1]
    train_questions = {question_of(p) for p in chat_prompts(read_jsonl(cfg.run_dir / "data" / "train.jsonl"))[0]}
    assert len(shots) == 2 and all(s["content"] in train_questions for s in shots)
    assert question not in {s["content"] for s in shots}
    predictions = read_jsonl(cfg.run_dir / COMPARE_DIR / "predictions.jsonl")
    assert set(predictions[0]["answers"]) == set(result.data["approaches"])


def test_raft_run_trained_on_prompts_with_passages(bakeoff) -> None:
    cfg, result, _ = bakeoff
    raft_dir = cfg.run_dir / COMPARE_DIR / "raft"
    assert (raft_dir / "model" / "adapter_config.json").is_file()
    rows = read_jsonl(raft_dir / "data" / "train.jsonl")
    assert all(r["messages"][-2]["content"].startswith("Sources:") for r in rows)
    stats = result.data["facts"]["raft"]
    assert stats["examples"] == len(rows) and 0 < stats["with_oracle"] < len(rows)  # P=0.8: some without it


def test_answers_and_timings_are_reused(bakeoff) -> None:
    cfg, first, retriever = bakeoff
    again = compare(cfg, log=QUIET, retriever=FakeRetriever())
    for name, row in again.data["approaches"].items():
        assert row["reused"], name
        before = first.data["approaches"][name]
        assert row["scores"] == before["scores"] and row["latency"]["requests"] == before["latency"]["requests"]
    assert again.data["seconds"] < first.data["seconds"]


def test_report_has_the_bakeoff_section(bakeoff) -> None:
    cfg, result, _ = bakeoff
    page = (cfg.run_dir / REPORT).read_text()
    assert 'id="bakeoff"' in page
    for name in result.data["approaches"]:
        assert name in page
    assert result.data["advice"]["findings"][0]["text"].split(" — ")[0] in page


def test_missing_ingredients_skip_with_reasons(tiny_config) -> None:
    cfg = tiny_config("compare.train=false", "evaluate.bootstrap=0", "compare.latency_requests=1")
    data = compare(cfg, log=QUIET).data
    assert set(data["approaches"]) == {"prompt", "fewshot"}
    assert "no index" in data["skipped"]["rag"] and "no index" in data["skipped"]["finetune+rag"]
    assert "compare.train is false" in data["skipped"]["finetune"]
    assert data["pairs"] == {}  # no bootstrap: no significance claimed
    assert any(f["rule"] == "more_test_data" and "bootstrap=0" in f["text"] for f in data["advice"]["findings"])


def test_fewshot_picks_the_most_similar_training_examples() -> None:
    prompts = [[{"role": "user", "content": q}] for q in ["Wie spät ist es?", "Item 7: what colour?", "Hello"]]
    shots = FewShot(prompts, ["A", "B", "C"], k=1).messages([{"role": "user", "content": "Item 8: what colour?"}], None)
    assert shots == [
        {"role": "user", "content": "Item 7: what colour?"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "Item 8: what colour?"},
    ]
    with_system = FewShot(prompts, ["A", "B", "C"], k=2).messages(
        [{"role": "user", "content": "Hello there"}], "Be brief."
    )
    assert with_system[0] == {"role": "system", "content": "Be brief."} and with_system[-2]["content"] == "C"


def test_raft_rows_hold_the_oracle_as_often_as_asked() -> None:
    rows = toy_rows(40)
    count = lambda text: len(text.split())  # noqa: E731
    always, stats = raft_rows(rows, FakeRetriever(), 3, 1.0, count, 500, seed=0)
    assert stats.with_oracle == 40 and stats.no_oracle_found == 0
    for row, out in zip(rows, always, strict=True):
        answer = row["messages"][-1]["content"]
        assert answer in out["messages"][-2]["content"] and out["messages"][-1]["content"] == answer
    never, stats = raft_rows(rows, FakeRetriever(), 3, 0.0, count, 500, seed=0)
    assert stats.with_oracle == 0
    assert all(r["messages"][-1]["content"] not in r["messages"][-2]["content"] for r in never)


def test_holds_answer() -> None:
    assert holds_answer("use -l, --length BITS to set", "-l, --length")
    assert holds_answer("Options:\n  --length  digest length", "-l, --length")
    assert not holds_answer("use -x to", "-l, --length")
    assert not holds_answer("anything", "")


def test_the_bakeoff_section_renders_in_headless_chromium(bakeoff, tmp_path: Path) -> None:
    from browser import chromium_paths, full_page_screenshot, open_browser

    if chromium_paths() is None:
        if os.environ.get("TUNEFORGE_REQUIRE_BROWSER"):
            pytest.fail("TUNEFORGE_REQUIRE_BROWSER is set (.ci/run) but chromium or chromedriver is not installed")
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver); CI runs this test")
    cfg, result, _ = bakeoff
    driver = open_browser(width=1200)
    try:
        driver.get((cfg.run_dir / REPORT).as_uri())
        section = driver.find_element("css selector", "#bakeoff")
        assert section.is_displayed()
        rows = driver.find_elements("css selector", "#bakeoff-table tbody tr")
        assert [r.find_element("css selector", "td").text for r in rows] == list(result.data["approaches"])
        assert driver.find_element("css selector", "#recommendation").text.startswith("Recommended:")
        assert len(driver.find_elements("css selector", "#pairs tbody tr")) == 5
        chart = driver.find_element("css selector", "#bakeoff-chart svg")
        assert chart.is_displayed() and chart.size["width"] > 300
        assert len(driver.find_elements("css selector", "details.prompt")) == 5
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1200  # no sideways scroll
        full_page_screenshot(driver, tmp_path / "bakeoff.png")
    finally:
        driver.quit()
    assert (tmp_path / "bakeoff.png").stat().st_size > 10_000


def test_cli_prints_the_table_the_skipped_and_the_advice(tiny_config, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tuneforge.cli import app
    from tuneforge.config import dump_config

    config = tmp_path / "bake.yaml"
    config.write_text(
        dump_config(tiny_config("compare.approaches=[prompt, fewshot, rag]", "compare.latency_requests=1"))
    )
    result = CliRunner().invoke(app, ["compare", str(config), "evaluate.bootstrap=100"])
    assert result.exit_code == 0, result.output
    assert "bake-off on the test split" in result.output
    assert "prompt" in result.output and "fewshot" in result.output
    assert "skipped rag: no index" in result.output
    assert "Recommended:" in result.output
    bad = CliRunner().invoke(app, ["compare", str(config), "compare.approaches=[prompt, magic]"])
    assert bad.exit_code == 2 and "compare.approaches" in bad.output and "Traceback" not in bad.output


def test_nothing_runnable_is_a_clear_error_before_any_model_loads(tiny_config) -> None:
    from tuneforge.errors import ConfigError, RunError

    with pytest.raises(RunError, match="no approach of compare.approaches can run.*rag: no index"):
        compare(tiny_config("compare.approaches=[rag]"), log=QUIET)
    with pytest.raises(ConfigError, match="compare.metric='bleu' is not one of"):
        compare(tiny_config("compare.metric=bleu"), log=QUIET)
    with pytest.raises(ConfigError, match="compare.finetune_run=.*holds no trained model"):
        compare(tiny_config("compare.finetune_run=/nonexistent/run"), log=QUIET)


def test_personal_data_is_masked_in_what_the_bakeoff_writes(tiny_config) -> None:
    from tuneforge.compare.bakeoff import _masked

    row = {"source": "a.jsonl:3", "input": "Mail anna.schmidt@example.com", "answers": {"rag": {"text": "x@y.de"}}}
    masked = _masked(row, tiny_config())
    assert masked["source"] == "a.jsonl:3" and "anna.schmidt" not in masked["input"] and "[EMAIL]" in masked["input"]
    assert "x@y.de" not in masked["answers"]["rag"]["text"]
    assert _masked(row, tiny_config("evaluate.show_personal_data=true")) == row
