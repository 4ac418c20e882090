"""multitask: several chat datasets, tagged and stratified by task, mixed by weight/temperature, scored per task."""

import json
from collections import Counter
from pathlib import Path

import pytest

from tuneforge.config import load_config
from tuneforge.data import prepare
from tuneforge.errors import ConfigError, DataError
from tuneforge.evaluation import evaluate
from tuneforge.models import load_tokenizer
from tuneforge.rundir import read_jsonl
from tuneforge.train import train
from tuneforge.train.multitask import MULTITASK, mix, shares
from tuneforge.train.tasks import TaskContext

from helpers import chat, review_rows, toy_rows, write_jsonl

QUIET = {"log": lambda *a: None}


def greeting_rows(n: int) -> list[dict[str, object]]:
    """A second task: answer a greeting in the language it came in."""
    hello = [("Hallo, ich bin Kunde {i}.", "Guten Tag, Kunde {i}!"), ("Hello, I am customer {i}.", "Good day, {i}!")]
    return [chat(hello[i % 2][0].format(i=i), hello[i % 2][1].format(i=i)) for i in range(n)]


@pytest.fixture(scope="module")
def task_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tasks")
    return write_jsonl(folder / "colour.jsonl", toy_rows(60)), write_jsonl(folder / "greet.jsonl", greeting_rows(20))


def multitask_config(tiny_config, colour: Path, greet: Path, *extra: str, greet_weight: float = 1.0):
    return tiny_config(
        "data.path=null",
        "train.task=multitask",
        f"data.datasets=[{{name: colour, path: {colour}}}, {{name: greet, path: {greet}, weight: {greet_weight}}}]",
        "data.estimate=false",
        "evaluate.limit=null",
        *extra,
    )


def test_multitask_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.task=multitask and data.datasets go together"):
        load_config(None, ["train.task=multitask", "data.path=x.jsonl"])
    with pytest.raises(ConfigError, match="task names must differ"):
        load_config(None, ["train.task=multitask", "data.datasets=[{name: a, path: x}, {name: a, path: y}]"])
    with pytest.raises(ConfigError, match="replaces data.path"):
        load_config(None, ["train.task=multitask", "data.path=x", "data.datasets=[{name: a, path: x}]"])
    config = tmp_path / "run.yaml"
    config.write_text("train: {task: multitask}\ndata: {datasets: [{name: a, path: data/a.jsonl}]}\n")
    assert load_config(config).data.datasets[0].path == str(tmp_path / "data" / "a.jsonl")


def test_shares_follow_weight_and_temperature() -> None:
    assert shares({"a": 90, "b": 10}, {}, 1.0) == pytest.approx({"a": 0.9, "b": 0.1})
    assert shares({"a": 90, "b": 10}, {"b": 9.0}, 1.0) == pytest.approx({"a": 0.5, "b": 0.5})
    even = shares({"a": 90, "b": 10}, {}, 1000.0)
    assert even["a"] == pytest.approx(0.5, abs=0.01)  # a high temperature evens the tasks out
    assert shares({"a": 100, "b": 25}, {}, 2.0) == pytest.approx({"a": 10 / 15, "b": 5 / 15})


def test_multitask_prepares_trains_and_scores_per_task(tiny_config, task_files: tuple[Path, Path]) -> None:
    cfg = multitask_config(tiny_config, *task_files, "train.epochs=3", greet_weight=3.0)
    result = prepare(cfg)
    for split in ("train", "val", "test"):
        rows = read_jsonl(cfg.run_dir / "data" / f"{split}.jsonl")
        assert {r["task"] for r in rows} == {"colour", "greet"}, split  # stratified: every task in every split
        assert result.report["labels"][split] == dict(Counter(r["task"] for r in rows))
    assert "tasks" in result.text()

    tokenizer = load_tokenizer(cfg.model.name)
    examples = MULTITASK.load(cfg.run_dir / "data" / "train.jsonl", tokenizer, TaskContext.of(cfg))
    mixed = Counter(e.task for e in mix(examples, TaskContext.of(cfg)))
    natural = Counter(e.task for e in examples)
    assert sum(mixed.values()) == len(examples)
    expected = 3 * natural["greet"] / (3 * natural["greet"] + natural["colour"])
    assert mixed["greet"] / len(examples) == pytest.approx(expected, abs=0.02)  # weight 3 triples its share
    hot = cfg.model_copy(update={"train": cfg.train.model_copy(update={"mixture_temperature": 1000.0})})
    evened = Counter(e.task for e in mix(examples, TaskContext.of(hot)))
    assert evened["greet"] / len(examples) == pytest.approx(0.75, abs=0.02)  # sizes evened out, weight 3 of 4 left

    train(cfg, **QUIET)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "val_loss" in r]
    assert {"val_loss_colour", "val_loss_greet"} <= set(scored[-1])
    assert scored[-1]["val_loss_colour"] < scored[0]["val_loss_colour"]
    assert scored[-1]["val_loss_greet"] < scored[0]["val_loss_greet"]
    report = evaluate(cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"task": "chat"})}), **QUIET)
    tuned, base = report.scores["tuned"], report.scores["base"]
    for task in ("colour", "greet"):
        assert tuned[f"test_{task}_loss"] < base[f"test_{task}_loss"]
    assert {p["task"] for p in read_jsonl(cfg.run_dir / "predictions.jsonl")} == {"colour", "greet"}


def test_multitask_needs_chat_datasets(tiny_config, task_files: tuple[Path, Path], tmp_path: Path) -> None:
    reviews = write_jsonl(tmp_path / "reviews.jsonl", review_rows(20, 20))
    cfg = tiny_config(
        "data.path=null",
        "train.task=multitask",
        f"data.datasets=[{{name: sentiment, path: {reviews}}}]",
        "data.estimate=false",
    )
    with pytest.raises(DataError):
        prepare(cfg)
    report = json.loads((cfg.run_dir / "data" / "data_report.json").read_text())
    assert "multitask_not_chat" in {i["rule"] for i in report["issues"]}
