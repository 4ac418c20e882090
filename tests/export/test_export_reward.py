"""A reward model exports as a sequence-classification model whose raw score (pipeline function_to_apply="none", as
TRL and vLLM's reward task read it) is tuneforge's reward; language-model targets refuse it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import trained

from tuneforge.errors import RunError
from tuneforge.export import export

from helpers import write_jsonl


def test_a_reward_model_exports_with_its_rewards(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"prompt": f"Item {i}?", "chosen": f'{{"item": {i}}}', "rejected": f"item {i}, I think"} for i in range(40)]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    run = trained(tmp_path / "runs", f"model.name={tiny_model_dir}", f"data.path={data}", "name=rm",
                  "train.task=reward", "train.epochs=2", "train.learning_rate=0.003")  # fmt: skip
    result = export(run, "classifier", None, "q8_0", 8, None, True)
    parity = result.parity
    assert parity is not None and not parity.problems, parity
    assert 0 < parity.prompts <= 8 and parity.same_answers == parity.prompts and parity.max_logprob_diff < 1e-3
    assert parity.metrics["pair_accuracy"]["tuneforge"] == parity.metrics["pair_accuracy"]["export"]
    assert result.facts["task"] == "reward"
    with pytest.raises(RunError, match="--to classifier"):
        export(run, "merged", None, "q8_0", 8, None, True)
