import json
import shutil
from pathlib import Path

import pytest

from tuneforge.errors import ModelError, RunError
from tuneforge.evaluation import evaluate
from tuneforge.evaluation.scores import summary_rows
from tuneforge.metrics import json_extraction, parse_json_object, perplexity, same_value
from tuneforge.rundir import load_run, read_jsonl

from helpers import chat, write_jsonl


def test_json_extraction_scores_validity_fields_and_exact_match() -> None:
    refs = ['{"a": "x", "n": 24, "f": 12.5}'] * 4
    preds = [
        '{"a": "x", "n": 24.0, "f": 12.5}',  # all right (24 == 24.0)
        '{"a": "x", "n": 12, "f": 12.5}',  # one field wrong
        'Sure! {"a": "x", "n": 24, "f": 12.5}',  # not exactly JSON: counts as invalid
        '{"a": " x ", "n": 24, "f": 12.5, "z": 1}',  # right fields, but an extra key: no exact match
    ]
    scores = json_extraction(preds, refs)
    assert scores["json_valid"] == 0.75
    assert scores["json_exact_match"] == 0.25
    assert scores["field_accuracy"] == {"a": 0.75, "n": 0.5, "f": 0.75}
    assert scores["mean_field_accuracy"] == pytest.approx((0.75 + 0.5 + 0.75) / 3)


def test_metric_helpers() -> None:
    assert parse_json_object(' {"a": 1}\n') == {"a": 1}
    assert parse_json_object("[1]") is None and parse_json_object("{bad") is None
    assert same_value(24, 24.0) and not same_value(True, 1) and not same_value("24", 24)
    assert perplexity(0.0) == 1.0 and perplexity(1e9) > 1e20
    assert json_extraction([], [])["json_valid"] == 0.0


def test_evaluate_scores_base_and_tuned_side_by_side(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "toy"
    shutil.copytree(trained_run, run)
    cfg = load_run(run, ["evaluate.limit=6"])
    report = evaluate(cfg, log=lambda *a: None)
    assert set(report.scores) == {"base", "tuned"} and report.n == 6
    saved = json.loads((run / "eval.json").read_text())
    assert saved["models"]["tuned"]["test_loss"] == report.scores["tuned"]["test_loss"]
    # The toy task is learnable in 3 epochs: the tuned adapter must beat the random base model clearly.
    for split in ("val", "test"):
        assert report.scores["tuned"][f"{split}_loss"] < report.scores["base"][f"{split}_loss"] - 1.0
    assert report.scores["tuned"]["json_valid"] >= report.scores["base"]["json_valid"]
    predictions = read_jsonl(run / "predictions.jsonl")
    assert len(predictions) == 6 and {"source", "reference", "base", "tuned"} <= set(predictions[0])
    rows = dict(summary_rows(report))
    assert list(rows)[:8] == [
        "val_loss",
        "val_perplexity",
        "test_loss",
        "test_perplexity",
        "json_valid",
        "json_exact_match",
        "field_accuracy",
        "token_f1",
    ]
    assert "  colour" in rows
    # every metric of the answers has its 95% interval per model and a tuned-minus-base difference with a verdict
    for name in ("json_valid", "json_exact_match", "field_accuracy", "token_f1"):
        for variant in ("base", "tuned"):
            low, high = saved["intervals"][variant][name]
            assert low <= saved["models"][variant][name] <= high
        comparison = saved["comparison"]["metrics"][name]
        assert comparison["delta"] == pytest.approx(
            saved["models"]["tuned"][name] - saved["models"]["base"][name], abs=1e-3
        )
        assert isinstance(comparison["significant"], bool) and 0 <= comparison["p_value"] <= 1
    assert saved["comparison"]["baseline"] == "base"
    assert "[" in rows["token_f1"][0] and rows["token_f1"][2].startswith(("+", "-"))
    # each answer's own scores (the mean metrics) are saved beside it and average to the reported score
    for variant in ("base", "tuned"):
        mean = sum(p["scores"][variant]["token_f1"] for p in predictions) / len(predictions)
        assert mean == pytest.approx(report.scores[variant]["token_f1"], abs=1e-3)
    # losses are scores too: per-example (loss, tokens) rows pooled, with intervals and the tuned-vs-base test
    for split in ("val", "test"):
        low, high = saved["intervals"]["tuned"][f"{split}_loss"]
        assert low <= report.scores["tuned"][f"{split}_loss"] <= high
        assert saved["comparison"]["metrics"][f"{split}_perplexity"]["delta"] < 0  # tuned is better: lower
    assert report.page == run / "report.html"
    html = report.page.read_text(encoding="utf-8")
    assert 'id="examples"' in html and f"{report.scores['tuned']['token_f1']:.3f}" in html


def test_evaluate_errors_name_the_missing_piece(trained_run: Path, tmp_path: Path, tiny_config) -> None:
    with pytest.raises(RunError, match="is not a tuneforge run directory"):
        load_run(tmp_path / "nothing")
    run = tmp_path / "toy"
    shutil.copytree(trained_run, run)
    (run / "data" / "test.jsonl").unlink()
    with pytest.raises(RunError, match=r"test.jsonl does not exist\n  fix: run `tuneforge prepare"):
        evaluate(load_run(run), log=lambda *a: None)
    shutil.copytree(trained_run / "data", run / "data", dirs_exist_ok=True)
    shutil.rmtree(run / "model")
    with pytest.raises(RunError, match=r"model does not exist\n  fix: run `tuneforge train"):
        evaluate(load_run(run), log=lambda *a: None)


def test_an_adapter_on_the_wrong_base_model_is_refused(trained_run: Path, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other-base"
    shutil.copytree(_base_dir(trained_run), other)
    config = LlamaConfig.from_pretrained(other)
    config.hidden_size, config.intermediate_size = 32, 64
    LlamaForCausalLM(config).save_pretrained(other)
    run = tmp_path / "toy"
    shutil.copytree(trained_run, run)
    with pytest.raises(ModelError, match="does not fit the base model"):
        evaluate(load_run(run, [f"model.name={other}"]), log=lambda *a: None)


def _base_dir(run: Path) -> Path:
    return Path(json.loads((run / "model" / "tuneforge.json").read_text())["base_model"])


def test_answers_are_reused_until_something_that_decides_them_changes(
    trained_run: Path, tmp_path: Path, monkeypatch
) -> None:
    from tuneforge.evaluation import generations as module

    run = tmp_path / "toy"
    shutil.copytree(trained_run, run)
    first = evaluate(load_run(run, ["evaluate.limit=4"]), log=lambda *a: None)
    real, calls = module.generate_texts, []

    def counted(model, tokenizer, prompts, params, batch_size, label):
        calls.append(label)
        return real(model, tokenizer, prompts, params, batch_size, label)

    monkeypatch.setattr(module, "generate_texts", counted)
    lines: list[str] = []
    again = evaluate(load_run(run, ["evaluate.limit=4"]), log=lines.append)
    assert calls == [] and again.scores == first.scores and again.intervals == first.intervals
    assert "tuned: reusing its 4 saved answers (same model, prompts and settings)" in lines
    evaluate(load_run(run, ["evaluate.limit=4", "evaluate.max_new_tokens=8"]), log=lambda *a: None)
    assert calls == ["base", "tuned"]  # another generation setting: both answer again
    adapter = run / "model" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes())  # the adapter rewritten, as by training again
    evaluate(load_run(run, ["evaluate.limit=4", "evaluate.max_new_tokens=8"]), log=lambda *a: None)
    # the base model's answers still stand (and the forgetting probe's: its answer length is its own)
    assert calls == ["base", "tuned", "tuned", "probe-tuned"]
    (run / "generations.json").write_text("{not json")  # a damaged cache is regenerated, not an error
    evaluate(load_run(run, ["evaluate.limit=4", "evaluate.max_new_tokens=8"]), log=lambda *a: None)
    assert calls[4:] == ["base", "tuned", "probe-base", "probe-tuned"]


def test_other_runs_answer_the_same_split_beside_base_and_tuned(trained_run: Path, tmp_path: Path) -> None:
    run, other = tmp_path / "toy", tmp_path / "other"
    shutil.copytree(trained_run, run)
    shutil.copytree(trained_run, other)  # the same adapter in another run: it must score exactly as tuned
    cfg = load_run(run, ["evaluate.limit=4", f"evaluate.compare=[{other}]", "evaluate.forgetting=false"])
    report = evaluate(cfg, log=lambda *a: None)
    assert list(report.scores) == ["base", "tuned", "other"]
    assert report.scores["other"] == report.scores["tuned"]
    assert report.intervals["other"] == report.intervals["tuned"]
    predictions = read_jsonl(run / "predictions.jsonl")
    assert all(p["other"] == p["tuned"] for p in predictions)
    with pytest.raises(RunError, match="holds no trained model") as caught:
        evaluate(load_run(run, [f"evaluate.compare=[{tmp_path / 'nothing'}]"]), log=lambda *a: None)
    assert "runs/<name>" in caught.value.hint


def test_per_example_losses_pool_to_the_batched_loss(trained_run: Path) -> None:
    from tuneforge.evaluation.language import example_losses
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.train.tasks import TASKS, TaskContext, group_losses

    cfg = load_run(trained_run)
    tokenizer, model = load_tokenizer(cfg.model.name), load_model(cfg.model.name)
    examples = TASKS["sft"].load(trained_run / "data" / "val.jsonl", tokenizer, TaskContext.of(cfg))
    pad = int(tokenizer.pad_token_id)
    rows = example_losses(model, TASKS["sft"], examples, 3, pad, "cpu")
    assert rows.shape == (len(examples), 2) and (rows[:, 1] > 0).all() and (rows[:, 0] > 0).all()
    pooled = rows[:, 0].sum() / rows[:, 1].sum()  # batches of 3 here, of 4 there: padding changes nothing
    assert pooled == pytest.approx(group_losses(model, TASKS["sft"], examples, cfg.train, 4, pad, "cpu")[""], rel=1e-5)


def test_personal_data_left_in_the_splits_is_masked_in_predictions_and_report(tiny_config, tmp_path: Path) -> None:
    from tuneforge.data import prepare
    from tuneforge.train import train

    emails = [f"kunde{i}@beispiel.de" for i in range(40)]
    rows = [chat(f"Item {i}: reply to {mail} with the colour", f"Mail {mail}: red") for i, mail in enumerate(emails)]
    data = write_jsonl(tmp_path / "pii.jsonl", rows)
    settings = [f"data.path={data}", "train.max_steps=2", "evaluate.limit=4", "evaluate.forgetting=false"]
    cfg = tiny_config(*settings, "evaluate.compare_base=false", "evaluate.bootstrap=0")
    assert cfg.privacy.mode == "report"  # the default: personal data is counted, and stays in the splits
    prepare(cfg)
    assert any(mail in (cfg.run_dir / "data" / "test.jsonl").read_text() for mail in emails)
    train(cfg, log=lambda *a: None)
    evaluate(cfg, log=lambda *a: None)
    written = (cfg.run_dir / "predictions.jsonl").read_text() + (cfg.run_dir / "report.html").read_text()
    assert "[EMAIL]" in written and not any(mail in written for mail in emails)
    shown = load_run(cfg.run_dir, ["evaluate.show_personal_data=true"])
    evaluate(shown, log=lambda *a: None)
    written = (cfg.run_dir / "predictions.jsonl").read_text() + (cfg.run_dir / "report.html").read_text()
    assert any(mail in written for mail in emails)
