"""The forgetting guard: the shipped probe, its scores, the verdict and its place in evaluate's report."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tuneforge.evaluation import evaluate
from tuneforge.evaluation.forgetting import (
    accuracies,
    answered,
    changed_answers,
    forgetting_summary,
    load_probe,
    perplexities,
    verdict,
)
from tuneforge.models import load_model, load_tokenizer
from tuneforge.rundir import load_run


def test_the_shipped_probe_covers_english_and_german() -> None:
    probe = load_probe()
    for lang in ("en", "de"):
        questions = [q for q in probe["questions"] if q["lang"] == lang]
        assert len(questions) >= 15 and all(q["accept"] and q["question"].endswith("?") for q in questions)
        texts = [t["text"] for t in probe["texts"] if t["lang"] == lang]
        assert len(texts) >= 2 and all(len(t.split()) >= 80 for t in texts)
    assert len({q["question"] for q in probe["questions"]}) == len(probe["questions"])


def test_an_answer_counts_when_it_names_an_accepted_answer_as_whole_words() -> None:
    assert answered("The capital of France is Paris.", ["Paris"])
    assert answered("Es ist WEISS", ["weiß"])  # case folding: ß = ss
    assert not answered("Parisian food", ["Paris"]) and not answered("", ["Paris"])
    probe = {"questions": [{"lang": "en", "accept": ["4"]}, {"lang": "de", "accept": ["vier"]}]}
    assert accuracies(["4 legs", "drei"], probe) == {"all": 0.5, "en": 1.0, "de": 0.0}


def test_probe_perplexity_is_the_models_own_token_weighted_loss(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    texts = [{"lang": "en", "text": "one two three four five six"}, {"lang": "de", "text": "eins zwei drei"}]
    scores = perplexities(model, tokenizer, texts, 512)
    total, count = 0.0, 0
    for item in texts:
        ids = tokenizer(item["text"], return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    assert scores["all"] == pytest.approx(math.exp(total / count), rel=1e-3)
    assert set(scores) == {"all", "en", "de"}


def _scores(ppl_base, ppl_tuned, acc_base, acc_tuned):
    return {
        "base": {"perplexity": {"all": ppl_base}, "accuracy": {"all": acc_base}},
        "tuned": {"perplexity": {"all": ppl_tuned}, "accuracy": {"all": acc_tuned}},
    }


def test_the_verdict_warns_above_the_threshold_and_suggests_replay() -> None:
    calm = verdict(_scores(10.0, 10.5, 0.6, 0.55), 0.1)  # +5% perplexity, -0.05 accuracy
    assert calm["warning"] is None and calm["perplexity_change"] == pytest.approx(0.05)
    mild = verdict(_scores(10.0, 11.5, 0.6, 0.6), 0.1)  # +15%
    assert "perplexity rose 15.0%" in mild["warning"] and mild["replay_share"] == 0.1
    assert "replay" in mild["warning"] and "data.datasets" in mild["warning"]
    severe = verdict(_scores(10.0, 10.0, 0.6, 0.3), 0.1)  # 0.3 fewer right: more than twice the threshold
    assert "fell by 0.30" in severe["warning"] and severe["replay_share"] == 0.25
    assert severe["accuracy_change"] == pytest.approx(-0.3)


def test_the_changed_answers_put_the_tuned_models_losses_first() -> None:
    probe = {"questions": [{"question": f"q{i}", "accept": ["yes"]} for i in range(4)]}
    base = ["yes", "no", "yes", "yes"]
    tuned = ["yes", "yes indeed", "{}", "no"]
    rows = changed_answers(probe, base, tuned)
    assert [r["question"] for r in rows] == ["q2", "q3", "q1"]  # both losses (in probe order), then the gain
    assert rows[0] == {"question": "q2", "base": "yes", "tuned": "{}", "base_right": True, "tuned_right": False}
    assert len(changed_answers(probe, base, tuned, limit=1)) == 1


def test_evaluate_reports_the_forgetting_check(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "toy"
    shutil.copytree(trained_run, run)
    lines: list[str] = []
    report = evaluate(load_run(run, ["evaluate.limit=2", "evaluate.forgetting_threshold=0"]), log=lines.append)
    check = json.loads((run / "eval.json").read_text())["forgetting"]
    assert check == report.forgetting and check["probe"] == {"questions": 30, "texts": 4}
    for variant in ("base", "tuned"):
        assert set(check["models"][variant]["perplexity"]) == {"all", "en", "de"}
        assert 0 <= check["models"][variant]["accuracy"]["all"] <= 1
    ppl = check["models"]
    assert check["perplexity_change"] == pytest.approx(
        ppl["tuned"]["perplexity"]["all"] / ppl["base"]["perplexity"]["all"] - 1, abs=1e-3
    )
    worse = check["perplexity_change"] > 0 or check["accuracy_change"] < 0
    assert (check["warning"] is not None) == worse  # threshold 0: any worsening warns
    assert len(check["examples"]) <= 6 and all(e["base_right"] != e["tuned_right"] for e in check["examples"])
    assert forgetting_summary(check).startswith("forgetting check (30 general questions, 4 texts")
    off = evaluate(load_run(run, ["evaluate.limit=2", "evaluate.forgetting=false"]), log=lambda *a: None)
    assert off.forgetting is None and "forgetting" not in json.loads((run / "eval.json").read_text())
