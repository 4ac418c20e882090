import re
from pathlib import Path

import pytest

from tuneforge.config import RunConfig, describe_fields, load_config
from tuneforge.errors import ConfigError

from helpers import ROOT

FETCHED = ROOT / "examples" / "rlhf" / "data"  # not in the repository: written by examples/rlhf/fetch.py


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_points_at_real_files(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert all(Path(source).exists() for source in cfg.rag.sources)
    if cfg.rag.sources and cfg.data.path is None:
        return  # an index-only config (tuneforge index / ask)
    for data in (cfg.data.path, cfg.data.test_path):
        if data is not None and Path(data).parent == FETCHED:  # public data examples/rlhf/fetch.py takes from PyPI
            assert Path(data).name in (FETCHED.parent / "fetch.py").read_text(encoding="utf-8"), data
        elif data is not None:
            assert Path(data).is_file(), data
    assert cfg.data.path is not None


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(
        ROOT / "configs" / "contracts.yaml",
        ["train.epochs=3", "train.target_modules=[q_proj, v_proj]", "evaluate.limit=5", "name=x"],
    )
    assert cfg.train.epochs == 3.0
    assert cfg.train.target_modules == ["q_proj", "v_proj"]
    assert cfg.evaluate.limit == 5
    assert cfg.run_dir == Path("runs") / "x"


def test_data_path_resolves_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("data:\n  path: d.jsonl\n")
    assert load_config(tmp_path / "sub" / "c.yaml").data.path == str((tmp_path / "sub" / "d.jsonl").resolve())


def test_every_problem_is_reported_at_once_with_suggestions() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epoch=3", "train.lora_r=0", "evaluate.split=dev"])
    text = str(info.value)
    assert "3 invalid setting(s)" in text
    assert "train.epoch: unknown setting; did you mean train.epochs?" in text
    assert "train.lora_r: Input should be greater than 0, or 'auto' (got 0)" in text
    assert "evaluate.split" in text and "'dev'" in text


def test_splits_must_leave_training_data() -> None:
    with pytest.raises(ConfigError, match="leaves too little to train on"):
        load_config(None, ["data.val_size=0.5", "data.test_size=0.45"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs", "is not key=value"),
        ("=3", "has an empty key part"),
        ("name=../escape", "name: String should match pattern"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_every_field_is_documented() -> None:
    lines = describe_fields().splitlines()
    assert any(line.startswith("train.lora_r (default 16): LoRA rank, or 'auto'") for line in lines)
    assert all(not line.endswith("None") for line in lines), "a field has no description"


def test_the_config_literals_name_exactly_the_registered_choices() -> None:
    """train.method, train.task and data.format are typed as Literals (so a typo fails on load with the choices
    listed); each must name exactly what its registry holds, or a registered choice would be refused or a listed
    one fail at run time."""
    from typing import get_args

    from tuneforge.config import DataConfig, DatasetConfig, TrainConfig
    from tuneforge.data.formats import EXAMPLES, FORMATS, SIGNATURES
    from tuneforge.metrics import DEFAULTS
    from tuneforge.train.methods import METHODS
    from tuneforge.train.tasks import TASKS

    assert set(get_args(TrainConfig.model_fields["method"].annotation)) == set(METHODS)
    assert set(get_args(TrainConfig.model_fields["task"].annotation)) == set(TASKS)
    for field in (DataConfig.model_fields["format"], DatasetConfig.model_fields["format"]):
        assert set(get_args(field.annotation)) == {"auto", *FORMATS}
    assert set(FORMATS) == set(SIGNATURES) == set(EXAMPLES)  # auto-detection and the help know every format
    evaluate_tasks = get_args(RunConfig.model_fields["evaluate"].annotation.model_fields["task"].annotation)
    assert set(evaluate_tasks) | {"class"} == set(DEFAULTS)  # every evaluate.task has its default metrics


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["train.sharding=fsdp", "train.early_stopping_patience=2"],
            "early_stopping_patience with train.sharding=fsdp",
        ),
        (["train.sharding=zero3", "train.eval_generate=4"], "eval_generate is not supported with train.sharding"),
        (["train.task=dpo", "train.eval_generate=4"], "scores generated answers (task sft or multitask)"),
        (["train.task=classify", "train.packing=true"], "packs chat examples (task sft or multitask)"),
    ],
)
def test_combinations_that_cannot_work_are_refused_on_load(settings: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, settings)


@pytest.mark.parametrize("path", sorted((ROOT / "bench" / "compare").glob("*.yaml")), ids=lambda p: p.name)
def test_every_bakeoff_benchmark_config_loads(path: Path) -> None:
    """bench/compare/*.yaml point at bench/.cache (built by bench/compare_sets.py): they must load and be valid;
    their data exist only where the sets were built."""
    cfg = load_config(path)
    assert cfg.train.task == "sft" and cfg.compare.approaches
    assert cfg.compare.metric is None or cfg.compare.metric in (cfg.evaluate.metrics or [cfg.compare.metric])
