"""The advisor's rules: each has a case where it fires and one where it must not, and the recommendation never
goes against the measurement."""

from __future__ import annotations

from itertools import combinations

import pytest

from tuneforge.compare.advisor import Evidence, advise, needed_examples
from tuneforge.config import Needs


def evidence(
    scores: dict[str, float],
    significant: set[frozenset[str]] = frozenset(),
    cost: dict[str, float] | None = None,
    needs: Needs | None = None,
    train_examples: int | None = 500,
    in_docs: float | None = None,
    half_width: float = 0.1,
) -> Evidence:
    """Evidence where the pairs in `significant` differ significantly and all others do not."""
    pairs = {}
    for a, b in combinations(scores, 2):
        delta = scores[b] - scores[a]
        pairs[f"{a}|{b}"] = {
            "delta": delta,
            "interval": [delta - half_width, delta + half_width],
            "p_value": 0.001 if frozenset({a, b}) in significant else 0.4,
            "significant": frozenset({a, b}) in significant,
        }
    return Evidence(
        metric="exact_match",
        scores=scores,
        intervals={a: [s - 0.05, s + 0.05] for a, s in scores.items()},
        cost_per_1k=cost or {a: 100.0 for a in scores},
        one_off={a: 0.0 for a in scores},
        pairs=pairs,
        n=100,
        needs=needs or Needs(),
        train_examples=train_examples,
        answers_in_documents=in_docs,
    )


def rule(advice, name: str):
    return next(f for f in advice.findings if f.rule == name)


def sig(*pairs: tuple[str, str]) -> set[frozenset[str]]:
    return {frozenset(p) for p in pairs}


def test_best_is_recommended_when_it_is_significantly_ahead() -> None:
    advice = advise(evidence({"prompt": 0.2, "finetune": 0.6}, sig(("prompt", "finetune"))))
    assert advice.recommended == "finetune" and advice.candidates == ["finetune"]
    assert rule(advice, "best").fired and "significantly ahead" in rule(advice, "best").text
    assert not rule(advice, "more_test_data").fired
    assert not rule(advice, "cheapest_within_best").fired


def test_the_cheapest_within_the_best_interval_is_recommended() -> None:
    cost = {"prompt": 50.0, "rag": 400.0, "finetune": 60.0}
    fires = advise(
        evidence({"prompt": 0.2, "rag": 0.55, "finetune": 0.5}, sig(("prompt", "rag"), ("prompt", "finetune")), cost)
    )
    assert fires.recommended == "finetune" and rule(fires, "cheapest_within_best").fired
    assert "60 against 400" in rule(fires, "cheapest_within_best").text
    # the cheaper approach is significantly worse: it is not within reach, the best stays
    quiet = advise(evidence({"prompt": 0.2, "rag": 0.55, "finetune": 0.5},
                            sig(("prompt", "rag"), ("prompt", "finetune"), ("rag", "finetune")), cost))  # fmt: skip
    assert quiet.recommended == "rag" and not rule(quiet, "cheapest_within_best").fired


def test_more_test_data_says_how_many_examples_would_separate_them() -> None:
    advice = advise(evidence({"prompt": 0.50, "finetune": 0.55}))
    finding = rule(advice, "more_test_data")
    assert finding.fired and "about 400 test examples (now 100)" in finding.text
    assert needed_examples(100, 0.05, [-0.05, 0.15]) == 400
    assert needed_examples(100, 0.0, [-0.1, 0.1]) is None  # no difference measured: no estimate
    same = advise(evidence({"prompt": 0.5, "fewshot": 0.5}))
    assert "same mean score" in rule(same, "more_test_data").text


@pytest.mark.parametrize("need", ["fresh_data", "hallucination_critical"])
def test_rag_needs_steer_to_rag_within_reach_and_are_overruled_otherwise(need: str) -> None:
    scores = {"prompt": 0.3, "rag": 0.58, "finetune": 0.6}
    cost = {"prompt": 50.0, "rag": 300.0, "finetune": 60.0}
    base = advise(evidence(scores, sig(("prompt", "rag"), ("prompt", "finetune")), cost))
    assert base.recommended == "finetune" and not rule(base, need).fired
    steered = advise(evidence(scores, sig(("prompt", "rag"), ("prompt", "finetune")), cost, Needs(**{need: True})))
    assert steered.recommended == "rag" and rule(steered, need).fired and "within reach" in rule(steered, need).text
    # rag significantly worse than the best: the need is reported as overruled, and rag is not recommended
    overruled = advise(evidence(scores, sig(("prompt", "rag"), ("prompt", "finetune"), ("rag", "finetune")), cost,
                                Needs(**{need: True})))  # fmt: skip
    assert overruled.recommended == "finetune" and "overrules" in rule(overruled, need).text


def test_custom_style_steers_to_fine_tuning() -> None:
    scores = {"prompt": 0.55, "finetune": 0.6}
    cost = {"prompt": 50.0, "finetune": 60.0}
    assert advise(evidence(scores, set(), cost)).recommended == "prompt"  # cheapest within reach
    styled = advise(evidence(scores, set(), cost, Needs(custom_style=True)))
    assert styled.recommended == "finetune" and rule(styled, "custom_style").fired


def test_both_needs_pick_the_combination() -> None:
    scores = {"rag": 0.6, "finetune": 0.6, "finetune+rag": 0.62}
    cost = {"rag": 100.0, "finetune": 50.0, "finetune+rag": 150.0}
    advice = advise(evidence(scores, set(), cost, Needs(fresh_data=True, custom_style=True)))
    assert advice.recommended == "finetune+rag"


def test_labelled_data_is_counted_when_not_given() -> None:
    scores = {"fewshot": 0.5, "finetune": 0.52}
    cost = {"fewshot": 90.0, "finetune": 60.0}
    few = advise(evidence(scores, set(), cost, train_examples=40))
    assert few.recommended == "fewshot" and "Few labelled examples (40" in rule(few, "labelled_data").text
    many = advise(evidence(scores, set(), cost, train_examples=400))
    assert many.recommended == "finetune" and "Enough labelled data" in rule(many, "labelled_data").text
    told = advise(evidence(scores, set(), cost, Needs(labelled_data=True), train_examples=40))
    assert told.recommended == "finetune"
    unknown = advise(evidence(scores, set(), cost, train_examples=None))
    assert not rule(unknown, "labelled_data").fired
    # few examples, but the tuned model is significantly better: the measurement wins
    better = advise(evidence({"fewshot": 0.3, "finetune": 0.6}, sig(("fewshot", "finetune")), cost, train_examples=40))
    assert better.recommended == "finetune"


def test_answers_in_the_documents_favour_rag() -> None:
    scores = {"prompt": 0.5, "rag": 0.52}
    cost = {"prompt": 50.0, "rag": 200.0}
    held = advise(evidence(scores, set(), cost, in_docs=0.9))
    assert held.recommended == "rag" and rule(held, "answers_in_documents").fired
    lacking = advise(evidence(scores, set(), cost, in_docs=0.1))
    assert lacking.recommended == "prompt" and not rule(lacking, "answers_in_documents").fired
    assert "retrieval can add little" in rule(lacking, "answers_in_documents").text


def test_nothing_measured_nothing_advised() -> None:
    advice = advise(evidence({}))
    assert advice.recommended is None and advice.findings[0].fired
