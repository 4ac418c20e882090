"""report.html: rendered from a run directory's files, self-contained, escaped, and drawn by a real browser."""

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import dump_config, load_config
from tuneforge.errors import RunError
from tuneforge.evaluation.report import fmt, p_value, write_report
from tuneforge.rundir import atomic_write_json, atomic_write_text, write_jsonl

from browser import chromium_paths, full_page_screenshot, open_browser

INJECTED = "<script>alert('x')</script><img src=http://example.com/x.png>"


def _write_run(root: Path, task: str) -> Path:
    """A run directory as the stages leave it (config, data report, training log, eval.json, predictions) for an
    extraction run (task 'sft') or a classifier ('classify'), with made-up scores."""
    cfg = load_config(None, ["model.name=tiny", f"output_dir={root}", f"name={task}", f"train.task={task}"])
    run = cfg.run_dir
    atomic_write_text(run / "config.yaml", dump_config(cfg))
    labels = {"train": {"neg": 30, "pos": 30}} if task == "classify" else {}
    atomic_write_json(
        run / "data" / "data_report.json",
        {
            "source": "data/train.jsonl",
            "kind": "classification" if task == "classify" else "chat",
            "read": 70,
            "kept": 68,
            "removed": {"duplicate": 2},
            "counts": {"train": 60, "val": 4, "test": 4},
            "tokens": {"train": 6000, "val": 400, "test": 400},
            "token_stats": {"train": {"min": 20, "mean": 100.0, "p50": 98, "p95": 180, "max": 200}},
            "labels": labels,
            "errors": 0,
            "warnings": 1,
            "issues": [{"severity": "warning", "rule": "leakage", "message": INJECTED, "hint": "drop one"}],
        },
    )
    write_jsonl(
        run / "metrics.jsonl",
        [
            {"step": s, "epoch": s / 10, "loss": 2.0 / s, "lr": 0.001 * (1 - s / 10), "tokens_per_s": 250.0 + s}
            | ({"val_loss": 1.5 / s, "val_exact_match": s / 10} if s % 5 == 0 else {})
            for s in range(1, 11)
        ],
    )
    if task == "classify":
        _classifier_eval(run)
    elif task == "sft":
        _extraction_eval(run)
    return run


def _extraction_eval(run: Path) -> None:
    questions = [f"Contract {i}: Acme GmbH, 12 months." for i in range(4)]
    write_jsonl(
        run / "data" / "test.jsonl",
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "{}"}]} for q in questions],
    )
    # (tuned, base): a gain, the same answer, a regression, a different answer scored the same
    answers = [('{"term": 12}', "JSON: {term: 12}"), ('{"term": 12}', '{"term": 12}'), (INJECTED, '{"term": 12}')]
    rows = [
        {"source": f"test.jsonl:{i + 1}", "reference": '{"term": 12}', "tuned": tuned, "base": base}
        | {
            "scores": {
                "base": {"exact_match": float(base == '{"term": 12}')},
                "tuned": {"exact_match": float(tuned == '{"term": 12}')},
            }
        }
        for i, (tuned, base) in enumerate([*answers, ('{"term": 1}', "12")])
    ]
    write_jsonl(run / "predictions.jsonl", rows)
    significant = {"delta": 0.5, "interval": [0.25, 0.75], "p_value": 0.0, "significant": True}
    atomic_write_json(
        run / "eval.json",
        {
            "split": "test",
            "n": 4,
            "models": {
                "base": {"test_loss": 2.5, "test_perplexity": 12.18, "exact_match": 0.25, "bleu": 10.0},
                "tuned": {"test_loss": 0.4, "test_perplexity": 1.49, "exact_match": 0.75, "bleu": 60.0},
            },
            "intervals": {"base": {"exact_match": [0.0, 0.5]}, "tuned": {"exact_match": [0.5, 1.0]}},
            "comparison": {
                "baseline": "base",
                "model": "tuned",
                "resamples": 1000,
                "metrics": {  # losses come first, as evaluate writes them
                    "test_loss": {**significant, "delta": -2.1, "interval": [-2.5, -1.7]},
                    "exact_match": significant,
                    "bleu": {**significant, "delta": 50.0, "interval": [30, 70]},
                },
            },
            "details": {"base": {"field_accuracy": {"term": 0.25}}, "tuned": {"field_accuracy": {"term": 0.75}}},
            "forgetting": {
                "probe": {"questions": 30, "texts": 4},
                "models": {
                    "base": {"perplexity": {"all": 38.0, "en": 27.0}, "accuracy": {"all": 0.4, "en": 0.6}},
                    "tuned": {"perplexity": {"all": 45.6, "en": 29.0}, "accuracy": {"all": 0.2, "en": 0.4}},
                },
                "perplexity_change": 0.2,
                "accuracy_change": -0.2,
                "threshold": 0.1,
                "warning": "possible forgetting: mix general chat data back in (replay)",
                "examples": [
                    {
                        "question": "Capital of France?",
                        "base": "Paris",
                        "tuned": '{"city": 1}',
                        "base_right": True,
                        "tuned_right": False,
                    }
                ],
            },
            "seconds": 12.5,
        },
    )


def _classifier_eval(run: Path) -> None:
    probabilities = [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]]
    truth = ["neg", "pos", "pos", "pos"]
    write_jsonl(
        run / "predictions.jsonl",
        [
            {
                "source": f"test.jsonl:{i + 1}",
                "text": f"review {i} {INJECTED}",
                "reference": t,
                "prediction": "neg" if p[0] > p[1] else "pos",
                "probabilities": {"neg": p[0], "pos": p[1]},
            }
            for i, (p, t) in enumerate(zip(probabilities, truth, strict=True))
        ],
    )
    scores = {"majority": {"accuracy": 0.75, "ece": 0.25}, "tuned": {"accuracy": 0.75, "ece": 0.1}}
    atomic_write_json(
        run / "eval.json",
        {
            "split": "test",
            "n": 4,
            "models": scores,
            "intervals": {m: {k: [v - 0.1, v + 0.1] for k, v in s.items()} for m, s in scores.items()},
            "comparison": {
                "baseline": "majority",
                "model": "tuned",
                "resamples": 1000,
                "metrics": {
                    "accuracy": {"delta": 0.0, "interval": [-0.2, 0.2], "p_value": 1.0, "significant": False},
                    "ece": {"delta": -0.15, "interval": [-0.2, -0.1], "p_value": 0.01, "significant": True},
                },
            },
            "details": {
                "tuned": {
                    "per_class": {
                        "neg": {"precision": 0.5, "recall": 1.0, "f1": 0.667, "support": 1},
                        "pos": {"precision": 1.0, "recall": 0.667, "f1": 0.8, "support": 3},
                    },
                    "confusion_matrix": {"labels": ["neg", "pos"], "rows": [[1, 0], [1, 2]]},
                }
            },
            "seconds": 1.0,
        },
    )


class _Page(HTMLParser):
    """The parts of the page the tests look at: ids, tags, table cells by table id, external references."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.cells: dict[str, list[str]] = {}
        self.external: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append(tag)
        if attributes.get("id"):
            self.ids.add(str(attributes["id"]))
        if tag == "table":
            self._table = attributes.get("id") or ""
        if tag in ("td", "th"):
            self._cell = []
        for name in ("src", "href"):
            value = attributes.get(name) or ""
            if value and not value.startswith("#"):
                self.external.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.cells.setdefault(self._table, []).append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_an_extraction_report_shows_every_section_escaped_and_self_contained(tmp_path: Path) -> None:
    run = _write_run(tmp_path, "sft")
    html = write_report(run).read_text(encoding="utf-8")
    page = _Page(html)
    assert {
        "headline",
        "scores",
        "metrics",
        "score-chart",
        "fields",
        "examples",
        "forgetting",
        "probe-examples",
    } <= page.ids
    assert {"training", "training-charts", "data", "splits", "config", "settings"} <= page.ids
    assert "script" not in page.tags and "img" not in page.tags and page.external == []  # nothing fetched, nothing run
    assert "&lt;script&gt;alert" in html  # the model's and the data's text is shown as text
    assert html.count("<section") == html.count("</section>") == 9  # 6 sections and 3 examples
    metrics = page.cells["metrics"]
    row = metrics.index("exact_match")
    assert metrics[row : row + 5] == [
        "exact_match",
        "0.250 [0.00, 0.50]",
        "0.750 [0.50, 1.00]",
        "+0.500 [0.25, 0.75] *",
        "<0.002",
    ]
    assert "bleu" in metrics and "60.000" in metrics  # 0-100 scores are in the table, not in the 0-1 bar chart
    # the task's metrics lead the headline, losses follow; a fall of the loss is good news, and no bar
    assert html.index("exact_match (base → tuned)") < html.index("bleu (base → tuned)") < html.index("test_loss (base")
    assert 'class="num good">-2.100' in html and "test_loss (lower is better)" not in html
    assert html.count("<svg") == 1 + 4  # scores; loss, validation metric, learning rate, throughput
    # Examples: the models' answers differ on 3 of 4; the tuned model's regression comes first.
    assert "3 of 4 test examples got different answers" in html
    assert html.index("exact_match change -1.00") < html.index("exact_match change +1.00")
    assert page.cells["probe-examples"][3:6] == ["Capital of France?", "Paris", '{"city": 1}']
    assert "possible forgetting" in html and "+20.0%" in html
    settings = page.cells["settings"]
    assert settings[settings.index("train.task") + 1] == "sft" and "data.max_seq_len" in settings


def test_a_classifier_report_shows_the_confusion_matrix_and_its_mistakes(tmp_path: Path) -> None:
    run = _write_run(tmp_path, "classify")
    html = write_report(run).read_text(encoding="utf-8")
    page = _Page(html)
    assert {"confusion-matrix", "classes", "mistakes"} <= page.ids and "forgetting" not in page.ids
    assert (
        html.count("<section") == html.count("</section>") == 6
    )  # scores, confusion, examples, training, data, config
    assert page.cells["confusion-matrix"] == [
        "true ↓ / predicted →",
        "neg",
        "pos",
        "total",
        "neg",
        "1",
        "0",
        "1",
        "pos",
        "1",
        "2",
        "3",
    ]
    assert page.cells["mistakes"][4:8] == [f"review 2 {INJECTED}", "pos", "neg", "0.70"]  # escaped text, parsed back
    # ECE is lower-is-better: its significant fall is an improvement (green), accuracy's zero change is unclear.
    assert 'class="num good">-0.150' in html and 'class="num muted">+0.000' in html
    assert "ece (lower is better)" in html


def test_a_run_with_only_losses_and_no_training_log_still_gets_its_page(tmp_path: Path) -> None:
    run = _write_run(tmp_path, "pretrain")
    for name in ("metrics.jsonl", "data/data_report.json"):
        (run / name).unlink()
    atomic_write_json(run / "eval.json", {"split": "test", "n": 3, "models": {"tuned": {"test_loss": 2.0}}})
    page = _Page(write_report(run).read_text(encoding="utf-8"))
    assert page.cells["metrics"] == ["metric", "tuned", "test_loss", "2.000"]
    assert {"scores", "config"} <= page.ids and not {"examples", "training", "data", "forgetting"} & page.ids


def test_report_errors_and_the_cli(tmp_path: Path) -> None:
    run = _write_run(tmp_path, "sft")
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0 and "report.html" in result.output
    (run / "eval.json").unlink()
    with pytest.raises(RunError, match="(?s)eval.json does not exist.*run `tuneforge evaluate"):
        write_report(run)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a tuneforge run directory" in result.output
    (run / "eval.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(RunError, match="cannot be read as JSON"):
        write_report(run)
    assert fmt(None) == "–" and fmt(1234.567) == "1,234.6" and fmt(0.12345) == "0.123" and fmt(7) == "7"
    assert p_value(0.0, 1000) == "<0.002" and p_value(0.0312, 1000) == "0.031"


def _browser_or_skip() -> None:
    if chromium_paths() is None:
        if os.environ.get("TUNEFORGE_REQUIRE_BROWSER"):
            pytest.fail("TUNEFORGE_REQUIRE_BROWSER is set (.ci/run) but chromium or chromedriver is not installed")
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver); CI runs this test")


@pytest.mark.parametrize("task", ["sft", "classify"])
def test_the_report_renders_in_headless_chromium(tmp_path: Path, task: str) -> None:
    _browser_or_skip()
    run = _write_run(tmp_path, task)
    path = write_report(run)
    driver = open_browser(width=1200)
    try:
        driver.get(path.as_uri())
        assert driver.title == f"tuneforge report: {task}"
        figures = driver.find_elements("css selector", "figure svg")
        assert len(figures) == 5  # scores; loss, validation metric, learning rate, throughput
        for svg in figures:  # every chart is laid out, visible and of a readable size
            assert svg.is_displayed() and svg.size["width"] > 300 and svg.size["height"] > 100, svg.size
        rows = driver.find_elements("css selector", "#metrics tbody tr")
        assert len(rows) == len(json.loads((run / "eval.json").read_text())["models"]["tuned"])
        assert all(r.is_displayed() for r in rows)
        if task == "classify":
            cells = driver.find_elements("css selector", "#confusion-matrix td.cm")
            assert [c.text for c in cells] == ["1", "0", "1", "2"]
            shades = {c.value_of_css_property("background-color") for c in cells}
            assert len(shades) == 4  # the shade follows each cell's share of its row: 100%, 0%, 33%, 67%
        else:
            assert driver.find_element("css selector", "#forgetting .warning").is_displayed()
            assert len(driver.find_elements("css selector", "#examples .example")) == 3
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1200  # no sideways scroll
        assert driver.execute_script("return document.querySelectorAll('script').length") == 0  # alert never ran
        png = tmp_path / "report.png"
        full_page_screenshot(driver, png)
    finally:
        driver.quit()
    from PIL import Image

    with Image.open(png) as image:
        assert image.width == 1200 and image.height > 1500
        assert len(image.convert("RGB").getcolors(1 << 20) or []) > 50  # drawn, not a blank page
