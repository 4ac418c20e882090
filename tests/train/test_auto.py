"""`"auto"` hyperparameters: the documented rules, and a run that trains with what they chose."""

import json

import pytest

from tuneforge.config import load_config
from tuneforge.data import prepare
from tuneforge.train import train
from tuneforge.train.auto import Hyper, group_by_length, resolve, resolve_batch


@pytest.mark.parametrize(
    ("n_train", "epochs"), [(10, 10), (20, 5), (30, 4), (100, 3), (8_000, 3), (10_000, 2), (30_000, 1), (2, 25)]
)
def test_auto_epochs_follow_openais_rule(n_train: int, epochs: int) -> None:
    hp, notes = resolve(load_config(None, ["train.epochs=auto"]), n_train, 135_000_000)
    assert hp.epochs == epochs and notes == [f"epochs auto -> {epochs} ({n_train:,} training examples)"]


@pytest.mark.parametrize(
    ("method", "params", "lr"),
    [("lora", 10**8, 2e-4), ("dora", 10**10, 2e-4), ("full", 10**8, 3e-5), ("freeze", 10**9, 1e-5)],
)
def test_auto_learning_rate_by_method_and_size(method: str, params: int, lr: float) -> None:
    hp, _ = resolve(load_config(None, ["train.learning_rate=auto", f"train.method={method}"]), 500, params)
    assert hp.learning_rate == lr


@pytest.mark.parametrize(("n_train", "r"), [(999, 8), (1_000, 16), (9_999, 16), (10_000, 32)])
def test_auto_lora_rank_grows_with_the_data(n_train: int, r: int) -> None:
    hp, _ = resolve(load_config(None, ["train.lora_r=auto"]), n_train, 10**8)
    assert (hp.lora_r, hp.lora_alpha) == (r, 2 * r)


def test_set_values_stay_as_they_are() -> None:
    hp, notes = resolve(load_config(None, ["train.lora_r=4", "train.lora_alpha=7"]), 50, 10**8)
    assert hp == Hyper(epochs=2.0, batch_size=8, learning_rate=3e-4, lora_r=4, lora_alpha=7) and notes == []


@pytest.mark.parametrize(
    ("task", "setting", "grouped"),
    [("classify", "auto", True), ("sft", "auto", False), ("classify", "false", False), ("sft", "true", True)],
)
def test_auto_length_grouping_is_on_for_classification(task: str, setting: str, grouped: bool) -> None:
    cfg = load_config(None, [f"train.task={task}", f"train.group_by_length={setting}"])
    _, notes = resolve(cfg, 500, 10**8)
    assert group_by_length(cfg.train) is grouped
    noted = [n for n in notes if n.startswith("group_by_length")]
    assert noted == (
        ["group_by_length auto -> true (task classify: steps of similar-length examples, less padding)"]
        if setting == "auto" and grouped
        else []
    )


def test_auto_batch_size_fits_the_memory(tiny_config) -> None:
    from tuneforge.models import load_model

    model = load_model(tiny_config().model.name)
    hp = Hyper(2.0, 0, 1e-3, 8, 16)
    lengths = [40] * 200
    assert resolve_batch(hp, model, lengths, 0.5, "fp32", 64 * 2**30)[0].batch_size == 16
    assert resolve_batch(hp, model, lengths[:50], 0.5, "fp32", 64 * 2**30)[0].batch_size == 4  # a tenth of 50
    assert resolve_batch(hp, model, lengths, 0.5, "fp32", 100 * 2**20)[0].batch_size == 1  # too little memory


def test_a_run_trains_with_the_auto_choices(tiny_config) -> None:
    cfg = tiny_config(*(f"train.{k}=auto" for k in ("epochs", "batch_size", "learning_rate", "lora_r")))
    prepare(cfg)
    lines: list[str] = []
    result = train(cfg, log=lines.append)
    n = len((cfg.run_dir / "data" / "train.jsonl").read_text().splitlines())
    assert f"epochs auto -> 3 ({n} training examples)" in lines
    assert "learning_rate auto -> 0.0002 (method lora)" in lines
    assert f"lora_r auto -> 8, lora_alpha 16 ({n} training examples)" in lines
    assert any(line.startswith("batch_size auto -> 4 (fits 80% of") for line in lines)  # a tenth of the examples
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["lr"] for r in rows) == pytest.approx(2e-4)
    assert result.steps == 3 * -(-n // 4)  # 3 epochs of batches of 4
    adapter = json.loads((cfg.run_dir / "model" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (8, 16)
