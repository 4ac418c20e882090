"""The real embedded model's contracts adapter, exported to merged weights and to GGUF, checked in transformers and
llama.cpp: the same prompts, the end token kept, the answers of the merged model tuneforge's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_export import llama_cpp_or_skip

from tuneforge.config import load_config
from tuneforge.data import prepare
from tuneforge.export import export
from tuneforge.export.parity import LOSSLESS_TOLERANCE
from tuneforge.train import train

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PROMPTS = 6


@pytest.fixture(scope="module")
def contracts_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config(
        ROOT / "configs" / "contracts.yaml",
        [f"output_dir={tmp_path_factory.mktemp('runs')}", "train.max_steps=12", "data.estimate=false"],
    )
    prepare(cfg)
    train(cfg, log=lambda *a: None)
    return cfg.run_dir


def test_the_merged_contracts_model_answers_as_tuneforge_does(contracts_run: Path, tmp_path: Path) -> None:
    parity = export(contracts_run, "merged", tmp_path / "merged", prompts=PROMPTS, max_new_tokens=96).parity
    assert parity is not None and parity.ok, parity.problems
    assert parity.same_prompt == PROMPTS and parity.max_logprob_diff <= LOSSLESS_TOLERANCE
    # tuneforge decodes from the GGUF blocks with the adapter beside them; a near-tie may part once
    assert parity.same_answers >= PROMPTS - 1, parity.examples


def test_the_contracts_gguf_keeps_template_end_token_and_quality(contracts_run: Path, tmp_path: Path) -> None:
    llama_cpp_or_skip()
    result = export(contracts_run, "gguf", tmp_path / "gguf", quant="q8_0", prompts=PROMPTS, max_new_tokens=96)
    parity = result.parity
    assert parity is not None and parity.ok, parity.problems
    assert parity.same_prompt == PROMPTS and parity.missing_end_tokens == [] and parity.eos_mismatches == 0
    fields = parity.metrics["field_accuracy"]
    assert fields["export"] >= fields["tuneforge"] - 0.15, parity.metrics  # q8_0 keeps the task
