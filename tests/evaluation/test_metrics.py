"""Every registered metric against the reference library's own result on the same inputs; bootstrap and the
paired significance test; a user's own metric; clear errors for unknown ones."""

import math

import numpy as np
import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.evaluation.stats import compare, interval, resample_indices, resampled_scores
from tuneforge.metrics import METRICS, confusion, ece, normalize, per_class, resolve

# article-free English answers (SQuAD's script strips "a", "an", "the"; tuneforge does not, for any language)
PREDICTIONS = [
    "Paris is in France.",
    "forty two",
    "Berlin, Germany",
    "red green blue",
    "I do not know",
    "delivery within five days",
]
REFERENCES = [
    "Paris is in France",
    "forty-two",
    "Berlin",
    "blue green red",
    "Rome",
    "delivery within 5 working days",
]


def _squad(predictions, references):
    from torchmetrics.text import SQuAD

    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)]
    target = [{"answers": {"answer_start": [0], "text": [r]}, "id": str(i)} for i, r in enumerate(references)]
    return {k: float(v) / 100 for k, v in SQuAD()(preds, target).items()}


def test_exact_match_and_token_f1_equal_the_squad_reference() -> None:
    reference = _squad(PREDICTIONS, REFERENCES)
    assert METRICS["exact_match"].score(PREDICTIONS, REFERENCES) == pytest.approx(reference["exact_match"])
    assert METRICS["token_f1"].score(PREDICTIONS, REFERENCES) == pytest.approx(reference["f1"])
    assert 0 < reference["f1"] < 1 and 0 < reference["exact_match"] < 1  # the inputs exercise partial credit


def test_normalisation_is_unicode_aware() -> None:
    assert normalize("  Größe:\tXL! ") == "grösse xl"  # case folding spells ß as ss
    assert METRICS["exact_match"].score(["«Straße»"], ["STRASSE"]) == 1.0
    assert METRICS["token_f1"].score(["die Größe M"], ["Größe M"]) == pytest.approx(0.8)


def test_bleu_and_chrf_equal_sacrebleu_and_torchmetrics() -> None:
    import sacrebleu
    from torchmetrics.text import SacreBLEUScore

    bleu = METRICS["bleu"].score(PREDICTIONS, REFERENCES)
    chrf = METRICS["chrf"].score(PREDICTIONS, REFERENCES)
    assert bleu == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert chrf == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)
    # an independent BLEU implementation (torchmetrics, 0-1 scale) agrees; its chrF does not follow sacrebleu's
    # (62.31 vs 62.70 here), so chrF is checked against sacrebleu, the reference, alone
    targets = [[r] for r in REFERENCES]
    assert bleu / 100 == pytest.approx(float(SacreBLEUScore(tokenize="13a")(PREDICTIONS, targets)), abs=1e-4)
    assert 0 < bleu < 100


def test_rouge_equals_rouge_score_on_english_and_keeps_every_letter() -> None:
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"])  # the library's defaults
    for kind in ("rouge1", "rouge2", "rougeL"):
        expected = np.mean([scorer.score(r, p)[kind].fmeasure for p, r in zip(PREDICTIONS, REFERENCES, strict=True)])
        assert METRICS[kind].score(PREDICTIONS, REFERENCES) == pytest.approx(expected)
    # rouge-score's own tokenizer drops letters outside a-z: "Größe" and "Grüße" would both become "gr e"
    assert scorer.score("Größe", "Grüße")["rouge1"].fmeasure == 1.0
    assert METRICS["rouge1"].score(["Größe"], ["Grüße"]) == 0.0


def _classified(n: int = 60, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return list(probs), labels.tolist()


def test_classification_metrics_equal_torchmetrics() -> None:
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_calibration_error,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    probs, labels = _classified()
    p, t = torch.tensor(np.array(probs)), torch.tensor(labels)
    expected = {
        "accuracy": multiclass_accuracy(p, t, num_classes=3, average="micro"),
        "macro_f1": multiclass_f1_score(p, t, num_classes=3, average="macro"),
        "micro_f1": multiclass_f1_score(p, t, num_classes=3, average="micro"),
        "weighted_f1": multiclass_f1_score(p, t, num_classes=3, average="weighted"),
        "macro_precision": multiclass_precision(p, t, num_classes=3, average="macro"),
        "macro_recall": multiclass_recall(p, t, num_classes=3, average="macro"),
        "ece": multiclass_calibration_error(p, t, num_classes=3, n_bins=15, norm="l1"),
    }
    for name, value in expected.items():
        assert METRICS[name].score(probs, labels) == pytest.approx(float(value), abs=1e-6), name
    assert 0.01 < ece(probs, labels) < 0.5


def test_per_class_scores_and_confusion_matrix() -> None:
    probs = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]
    labels = [0, 1, 1, 1]
    assert confusion(probs, labels, 2) == [[1, 0], [1, 2]]
    scores = per_class(probs, labels, ["neg", "pos"])
    assert scores["neg"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert scores["pos"]["precision"] == 1.0 and scores["pos"]["recall"] == pytest.approx(2 / 3)
    # a perfectly confident, always right classifier is perfectly calibrated; always wrong at 0.9 is off by 0.9
    assert ece([[1.0, 0.0], [0.0, 1.0]], [0, 1]) == 0.0
    assert ece([[0.9, 0.1]] * 4, [1] * 4) == pytest.approx(0.9)


def test_bootstrap_interval_surrounds_the_score_and_narrows_with_more_examples() -> None:
    metric = METRICS["exact_match"]
    widths = []
    for n in (20, 400):
        preds = ["a" if i % 3 else "b" for i in range(n)]
        refs = ["a"] * n
        samples = resampled_scores(metric, preds, refs, resample_indices(n, 500, seed=1))
        low, high = interval(samples)
        assert low <= metric.score(preds, refs) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # ~1/sqrt(n)


def test_corpus_metrics_are_recomputed_per_resample() -> None:
    """A mean metric resampled through its per-example scores equals recomputing it on each resample."""
    indices = resample_indices(len(PREDICTIONS), 50, seed=3)
    fast = resampled_scores(METRICS["token_f1"], PREDICTIONS, REFERENCES, indices)
    from tuneforge.metrics import Metric

    slow = resampled_scores(Metric("text", METRICS["token_f1"].score), PREDICTIONS, REFERENCES, indices)
    assert fast == pytest.approx(slow)
    bleu = resampled_scores(METRICS["bleu"], PREDICTIONS, REFERENCES, indices)
    assert len(set(np.round(bleu, 6))) > 5  # BLEU differs between resamples


def test_paired_test_tells_a_real_difference_from_noise() -> None:
    n = 200
    rng = np.random.default_rng(0)
    refs = ["yes"] * n
    weak = ["yes" if rng.random() < 0.5 else "no" for _ in range(n)]
    strong = ["yes" if rng.random() < 0.8 else "no" for _ in range(n)]
    noisy = ["yes" if rng.random() < 0.52 else "no" for _ in range(n)]
    metric, indices = METRICS["exact_match"], resample_indices(n, 1000, seed=2)

    def versus(a, b):
        sa, sb = (resampled_scores(metric, x, refs, indices) for x in (a, b))
        return compare(sa, sb, metric.score(b, refs) - metric.score(a, refs))

    clear = versus(weak, strong)
    assert clear.significant and clear.p_value < 0.01 and clear.low > 0 and clear.delta > 0.2
    unclear = versus(weak, noisy)
    assert not unclear.significant and unclear.low < 0 < unclear.high
    same = versus(weak, weak)
    assert same.p_value == 1.0 and same.delta == 0.0 and not same.significant


def test_a_users_own_metric_from_a_file_or_a_module(tmp_path, monkeypatch) -> None:
    (tmp_path / "house.py").write_text(
        "def polite(prediction, reference):\n    return float('bitte' in prediction.lower())\n"
        "def broken(prediction, reference):\n    return 'yes'\n"
    )
    metric = resolve(str(tmp_path / "house.py") + ":polite")
    assert metric.kind == "text" and metric.score(["Bitte sehr", "Nein"], ["", ""]) == 0.5
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve("house:polite").score(["bitte"], ["x"]) == 1.0
    monkeypatch.chdir(tmp_path)
    assert resolve("house.py:polite").per_example("danke", "x") == 0.0  # relative to the working directory
    with pytest.raises(ConfigError, match="returned 'yes' for one example"):
        resolve("house:broken").score(["a"], ["b"])
    with pytest.raises(ConfigError, match="cannot be loaded: AttributeError") as caught:
        resolve("house:missing")
    assert "(prediction: str, reference: str)" in caught.value.hint
    with pytest.raises(ConfigError, match="cannot be loaded: FileNotFoundError"):
        resolve("nowhere.py:polite")
    with pytest.raises(ConfigError, match="unknown metric 'bleuu'") as caught:
        resolve("bleuu")
    assert "bleu" in caught.value.hint and "module:function" in caught.value.hint


def test_unknown_metrics_fail_when_the_config_loads(tiny_config) -> None:
    with pytest.raises(ConfigError, match=r"unknown metric\(s\) \['rouge'\]"):
        tiny_config("evaluate.metrics=[rouge]")
    assert tiny_config("evaluate.metrics=[bleu,my.module:score]").evaluate.metrics == ["bleu", "my.module:score"]
    assert math.isfinite(METRICS["chrf"].score(["a"], ["a"]))


def test_a_metric_that_does_not_fit_the_task_is_refused_before_models_load(tiny_config) -> None:
    from tuneforge.evaluation.scores import chosen_metrics

    with pytest.raises(ConfigError, match=r"\['bleu'\] cannot score train.task=classify") as caught:
        chosen_metrics(tiny_config("train.task=classify", "evaluate.metrics=[accuracy,bleu]"))
    assert "macro_f1" in caught.value.hint and "bleu" not in caught.value.hint
    with pytest.raises(ConfigError, match=r"\['accuracy'\] cannot score train.task=sft"):
        chosen_metrics(tiny_config("evaluate.metrics=[accuracy]"))
    with pytest.raises(ConfigError, match="scored by its own measures"):
        chosen_metrics(tiny_config("train.task=dpo", "evaluate.metrics=[bleu]"))
    assert list(chosen_metrics(tiny_config("evaluate.task=chat"))) == ["exact_match", "token_f1", "chrf", "rougeL"]
    assert list(chosen_metrics(tiny_config("train.task=classify")))[:2] == ["accuracy", "macro_f1"]


def test_a_splits_loss_pools_its_examples_by_tokens() -> None:
    from tuneforge.metrics import LOSS_METRICS, lower_is_better

    # (summed loss, tokens) rows: 6 over 4 tokens is 1.5, not the mean of the examples' own 3.0 and 1.0
    assert LOSS_METRICS["loss"].score([[3.0, 1.0], [3.0, 3.0]], [None, None]) == 1.5
    rows = [[2.0, 1.0], [6.0, 3.0]]
    assert LOSS_METRICS["perplexity"].score(rows, [None, None]) == pytest.approx(math.exp(2.0))
    assert lower_is_better("test_loss") and lower_is_better("val_colour_perplexity") and lower_is_better("ece")
    assert not lower_is_better("accuracy") and not lower_is_better("token_f1")


@pytest.mark.parametrize(("n", "n_classes"), [(80, 3), (7, 4), (30, 2)])
def test_class_scores_on_every_resample_at_once_equal_the_score_of_each(n: int, n_classes: int) -> None:
    rng = np.random.default_rng(n)
    probabilities = list(rng.dirichlet(np.ones(n_classes), size=n))
    labels = list(rng.integers(0, max(n_classes - 1, 2), n))  # with 4 classes, one never true
    indices = resample_indices(n, 200, seed=1)
    for name, metric in METRICS.items():
        if metric.kind != "class" or name == "ece":
            continue
        one_by_one = [metric.score([probabilities[i] for i in row], [labels[i] for i in row]) for row in indices]
        assert resampled_scores(metric, probabilities, labels, indices) == pytest.approx(one_by_one, abs=1e-12), name
