"""Exports round-trip: each target, loaded in its runtime, answers as tuneforge does (prompt tokens, next-token
log-probabilities within the stated tolerance, greedy answers), and the check catches a broken chat template or a
missing end token."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from tuneforge import __version__
from tuneforge.cli import app
from tuneforge.errors import RunError
from tuneforge.export import export
from tuneforge.export.export import _check_merged
from tuneforge.export.parity import LOSSLESS_TOLERANCE
from tuneforge.export.runs import open_run
from tuneforge.rundir import file_sha256

PROMPTS, LENGTH = 4, 32


def test_merged_weights_answer_as_tuneforge_does(trained_run: Path, tmp_path: Path) -> None:
    result = export(trained_run, "merged", tmp_path / "merged", prompts=PROMPTS, max_new_tokens=LENGTH)
    parity = result.parity
    assert parity is not None and parity.ok, parity.problems
    assert parity.same_prompt == PROMPTS and parity.same_answers == PROMPTS
    assert parity.max_logprob_diff <= LOSSLESS_TOLERANCE
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # plain transformers, no peft
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    assert not any("lora" in name for name, _ in model.named_parameters())
    saved = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert saved["parity"]["ok"] and saved["target"] == "merged"


def test_a_missing_end_token_and_a_changed_template_are_caught(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    export(trained_run, "merged", out, check=False)
    run = open_run(trained_run)
    config = json.loads((out / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [0]}))  # <|endoftext|> only
    broken = _check_merged(run, out, PROMPTS, 48)
    im_end = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|im_end|>")
    assert broken.missing_end_tokens == [im_end] and any(p.startswith("EOS mismatch") for p in broken.problems)
    (out / "generation_config.json").write_text(json.dumps(config))
    template = (out / "chat_template.jinja").read_text()
    changed = template.replace("<|im_start|>assistant\n", "<|im_start|>assistant\n\n")  # one more newline
    assert changed != template
    (out / "chat_template.jinja").write_text(changed)
    broken = _check_merged(run, out, PROMPTS, LENGTH)
    assert any(p.startswith("chat template mismatch") for p in broken.problems), broken.problems


def test_the_adapter_alone_loads_as_vllm_and_peft_read_it(trained_run: Path, tmp_path: Path) -> None:
    result = export(trained_run, "peft", tmp_path / "peft", prompts=PROMPTS, max_new_tokens=LENGTH)
    assert result.parity is not None and result.parity.ok and result.parity.same_answers == PROMPTS
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == result.facts["base_model"]
    assert f"--lora-modules toy={(tmp_path / 'peft').resolve()}" in result.facts["vllm_command"]
    assert result.facts["vllm_problems"] == []
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == [
        "MODEL_CARD.md", "adapter_config.json", "adapter_model.safetensors", "export.json"
    ]  # fmt: skip


def test_a_classifier_exports_for_the_text_classification_pipeline(
    classifier_run: Path, trained_run: Path, tmp_path: Path
) -> None:
    result = export(classifier_run, "classifier", tmp_path / "classifier", prompts=16)
    parity = result.parity
    assert parity is not None and parity.ok, parity.problems
    assert parity.same_answers == parity.prompts >= 8  # every held-out text (the split has fewer than 16)
    assert parity.metrics["accuracy"]["export"] == parity.metrics["accuracy"]["tuneforge"]
    with pytest.raises(RunError, match="--to classifier"):
        export(classifier_run, "merged", tmp_path / "no")
    with pytest.raises(RunError, match="not a classifier"):
        export(trained_run, "classifier", tmp_path / "no")


def llama_cpp_or_skip() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        if os.environ.get("TUNEFORGE_REQUIRE_LLAMA_CPP"):
            pytest.fail("TUNEFORGE_REQUIRE_LLAMA_CPP is set (.ci/run) but llama-cpp-python is not installed")
        pytest.skip('llama-cpp-python is not installed (pip install -e ".[gguf]"); CI runs this test')


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_a_gguf_answers_in_llama_cpp_as_tuneforge_does(smol_tokenized_run: Path, tmp_path: Path, quant: str) -> None:
    llama_cpp_or_skip()
    result = export(smol_tokenized_run, "gguf", tmp_path / "gguf", quant=quant, prompts=PROMPTS, max_new_tokens=LENGTH)
    parity = result.parity
    assert parity is not None and parity.ok, parity.problems
    assert parity.runtime == "llama.cpp" and parity.same_prompt == PROMPTS  # the embedded template, llama.cpp's BPE
    assert parity.missing_end_tokens == []
    if quant == "f16":  # f16 weights and llama.cpp's f16 attention cache: round-off only
        assert parity.max_logprob_diff < 0.01 and parity.same_answers == PROMPTS, parity.examples
    else:  # q8_0 moves the log-probs; a 64-wide random model answers near-ties, so its answers part late
        assert parity.max_logprob_diff < 0.2 and parity.common_prefix >= 0.5, parity.examples
    modelfile = (tmp_path / "gguf" / "Modelfile").read_text()
    assert f"FROM ./model-{quant}.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    from gguf import GGUFReader

    fields = GGUFReader(tmp_path / "gguf" / result.facts["gguf"]).fields
    assert "tokenizer.chat_template" in fields and "tokenizer.ggml.eos_token_id" in fields


def test_the_command_says_what_it_wrote_and_how_to_serve_it(trained_run: Path, tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["export", str(trained_run), "--to", "peft", "--out", str(tmp_path / "a"),
                                    "--prompts", "2", "--max-tokens", "8"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert (
        "vLLM: vllm serve" in done.output
        and "parity (transformers + peft): identical greedy answers 2/2" in done.output
    )
    bad = CliRunner().invoke(app, ["export", str(trained_run), "--to", "onnx"])
    assert bad.exit_code == 2 and "choose one of merged, peft, gguf, classifier" in bad.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    kept = CliRunner().invoke(app, ["export", str(trained_run), "--to", "peft", "--out", str(tmp_path / "mine")])
    assert kept.exit_code == 2 and "is not an earlier export" in kept.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_lineage_names_the_code_config_and_exact_data_and_the_card_shows_it(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "toy"
    shutil.copytree(trained_run, run)
    done = CliRunner().invoke(app, ["lineage", str(run), "--json"])
    assert done.exit_code == 0, done.output
    facts = json.loads(done.output[: done.output.rindex("}") + 1])
    recorded = facts["recorded"]
    assert recorded["splits"]["train"]["sha256"] == file_sha256(run / "data" / "train.jsonl")
    assert recorded["splits"]["train"]["records"] == len((run / "data" / "train.jsonl").read_text().splitlines())
    assert recorded["code"]["tuneforge"] == __version__ and recorded["config_sha256"] == facts["config_sha256_now"]
    assert facts["model_files"][0]["sha256"] == file_sha256(run / "model" / "adapter_model.safetensors")
    card = (run / "MODEL_CARD.md").read_text()
    assert card.startswith("---\nbase_model: ") and "pipeline_tag: text-generation" in card
    assert recorded["splits"]["test"]["sha256"] in card and "Not evaluated yet" in card
    printed = CliRunner().invoke(app, ["lineage", str(run)]).output
    assert f"split train: {recorded['splits']['train']['records']} records" in printed
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "\n# edited\n")
    assert "config.yaml changed since training" in CliRunner().invoke(app, ["lineage", str(run)]).output


def test_an_exports_model_card_says_how_it_compared(trained_run: Path, tmp_path: Path) -> None:
    export(trained_run, "merged", tmp_path / "merged", prompts=2, max_new_tokens=8)
    card = (tmp_path / "merged" / "MODEL_CARD.md").read_text()
    assert "## This export" in card and "parity (transformers): identical greedy answers 2/2" in card
    assert "## Evaluation" in card and "## Known limits" in card and "## Lineage" in card


def test_a_gguf_export_is_served_behind_the_same_api(smol_tokenized_run: Path, tmp_path: Path) -> None:
    llama_cpp_or_skip()
    import openai
    from fastapi.testclient import TestClient

    from tuneforge.serve import create_app
    from tuneforge.serve.llama_cpp_engine import LlamaCppEngine

    result = export(smol_tokenized_run, "gguf", tmp_path / "gguf", quant="f16", check=False)
    engine = LlamaCppEngine(tmp_path / "gguf" / result.facts["gguf"])
    try:
        client = openai.OpenAI(
            base_url="http://testserver/v1", api_key="-", http_client=TestClient(create_app([], engine=engine))
        )
        assert [m.id for m in client.models.list()] == ["smol"]  # named after the run it was exported from
        ask = [{"role": "user", "content": "Item 3: what colour?"}]
        whole = client.chat.completions.create(model="smol", messages=ask, max_tokens=12, temperature=0)
        text = whole.choices[0].message.content
        assert text and whole.usage is not None and whole.usage.completion_tokens > 0
        streamed = client.chat.completions.create(model="smol", messages=ask, max_tokens=12, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text  # greedy: the same
    finally:
        engine.close()
    with pytest.raises(RunError, match="without runs or fine-tuning jobs"):
        from tuneforge.config import load_config
        from tuneforge.launch import serving_app

        serving_app([smol_tokenized_run], load_config(None, []), None, None, None, None, tmp_path / "x.gguf")
