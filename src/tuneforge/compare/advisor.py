"""The advisor: which approach to use, from the bake-off's measurements and the user's situation.

It recommends only an approach the measurement does not contradict: the best on the ranking metric, or one not
significantly worse than it (paired bootstrap). Among those it prefers what the seeds' four questions ask for
(fresh data or hallucinations -> RAG, custom style or format -> fine-tuning, few labelled examples -> no training)
and then the cheapest to run. Every rule says whether it fired and why, citing the figures; a need the measurement
overrules is said so, not followed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tuneforge.compare.scoring import MIN_TESTED, ranked
from tuneforge.config import Needs
from tuneforge.evaluation.stats import paired

FAMILIES: dict[str, frozenset[str]] = {
    "prompt": frozenset(),
    "fewshot": frozenset(),
    "rag": frozenset({"rag"}),
    "finetune": frozenset({"finetune"}),
    "finetune+rag": frozenset({"rag", "finetune"}),
}
ENOUGH_LABELLED = 100  # OpenAI's fine-tuning guide: clear improvements from 50-100 examples
DOCUMENTS_HOLD = 0.5  # share of test answers found in the retrieved passages above which the documents hold them
DOCUMENTS_LACK = 0.2  # ... and below which they rarely do


@dataclass
class Finding:
    """One rule of the advisor: whether it fired, and what it says (with its evidence)."""

    rule: str
    fired: bool
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "fired": self.fired, "text": self.text}


@dataclass
class Evidence:
    """What the advisor reads: per approach its score, interval and running cost; each pair's comparison on the
    metric; the test size; the user's needs; what the data shows (training examples, answers in the documents)."""

    metric: str
    scores: dict[str, float]
    intervals: dict[str, list[float]]
    cost_per_1k: dict[str, float]  # machine-seconds per 1,000 requests
    one_off: dict[str, float]  # seconds of training / indexing before the first request
    pairs: dict[str, dict[str, Any]]
    n: int
    needs: Needs
    train_examples: int | None = None
    answers_in_documents: float | None = None
    bootstrap: int = 1000  # resamples of the significance test (evaluate.bootstrap)


@dataclass
class Advice:
    """The recommendation and every finding behind it."""

    recommended: str | None
    candidates: list[str]
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "recommended": self.recommended,
            "candidates": self.candidates,
            "findings": [f.to_json() for f in self.findings],
        }


def advise(ev: Evidence) -> Advice:
    """The recommendation: among the approaches not significantly worse than the best, the one the needs ask for,
    then the cheapest."""
    if not ev.scores:
        return Advice(None, [], [Finding("recommendation", True, "No approach could be measured: nothing to advise.")])
    order = ranked(ev.scores, ev.metric)
    best = order[0]
    if ev.pairs:
        candidates = [best] + [a for a in order[1:] if not _significant(ev, best, a)]
    else:  # no significance test ran (evaluate.bootstrap=0, or too few examples): only a tie is within reach
        candidates = [a for a in order if ev.scores[a] == ev.scores[best]]
    findings = [_best(ev, order), _cheapest(ev, best, candidates), _more_data(ev, order)]
    wanted, need_findings = _wanted_families(ev, candidates)
    findings += need_findings
    pick = _pick(ev, candidates, wanted)
    findings.insert(0, _recommendation(ev, pick, best, wanted))
    return Advice(pick, candidates, findings)


def _significant(ev: Evidence, a: str, b: str) -> bool:
    found = paired(ev.pairs, a, b)
    return bool(found and found["significant"])


def _p(ev: Evidence, p_value: float) -> str:
    """A bootstrap p-value; 0 means below the test's resolution (2 / resamples), so it reads "p<0.002"."""
    return f"p<{2 / ev.bootstrap:.2g}" if p_value == 0 and ev.bootstrap else f"p={p_value:.3f}"


def _fmt(ev: Evidence, name: str) -> str:
    bounds = ev.intervals.get(name)
    return f"{name} {ev.scores[name]:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else "")


def _best(ev: Evidence, order: list[str]) -> Finding:
    text = f"Best on {ev.metric}: {_fmt(ev, order[0])}"
    if len(order) > 1:
        found = paired(ev.pairs, order[1], order[0])
        verdict = (
            ""
            if found is None
            else (
                f", {'significantly' if found['significant'] else 'not significantly'} ahead of {_fmt(ev, order[1])} "
                f"(difference {found['delta']:+.3f}, {_p(ev, found['p_value'])})"
            )
        )
        text += verdict
    return Finding("best", True, text + ".")


def _cheapest(ev: Evidence, best: str, candidates: list[str]) -> Finding:
    cheapest = min(candidates, key=lambda a: (ev.cost_per_1k.get(a, math.inf), ev.one_off.get(a, 0.0)))
    if cheapest == best:
        return Finding(
            "cheapest_within_best", False, f"{best} is also the cheapest of the approaches within its reach."
        )
    return Finding(
        "cheapest_within_best",
        True,
        f"{cheapest} {'is not significantly worse than' if ev.pairs else 'scores the same as'} {best} and costs "
        f"less to run: "
        f"{ev.cost_per_1k.get(cheapest, math.nan):.0f} against {ev.cost_per_1k.get(best, math.nan):.0f} "
        f"machine-seconds per 1,000 requests.",
    )


def needed_examples(n: int, delta: float, interval: list[float]) -> int | None:
    """Test examples that would make a difference of `delta` significant, if it held: interval half-widths shrink
    as 1/sqrt(n), so n * (half-width / |delta|)^2 (None when no difference was measured at all)."""
    half = (interval[1] - interval[0]) / 2
    if delta == 0 or half <= 0:
        return None
    # the percentile interval and the p-value can disagree at the edge: never say fewer than there are now
    return max(n + 1, math.ceil(n * (half / abs(delta)) ** 2))


def _more_data(ev: Evidence, order: list[str]) -> Finding:
    if len(order) < 2:
        return Finding("more_test_data", False, "Only one approach was measured.")
    found = paired(ev.pairs, order[1], order[0])
    if found is None:
        why = "evaluate.bootstrap=0" if not ev.bootstrap else f"only {ev.n} test examples, under {MIN_TESTED}"
        return Finding("more_test_data", True, f"No significance test ran ({why}): no difference can be judged.")
    if found["significant"]:
        return Finding("more_test_data", False, f"{order[0]} is significantly ahead of the runner-up {order[1]}.")
    need = needed_examples(ev.n, found["delta"], found["interval"])
    how = (
        f"about {need:,} test examples (now {ev.n}) would separate them if the difference of {found['delta']:+.3f} held"
        if need
        else f"they have the same mean score on {ev.n} examples"
    )
    return Finding(
        "more_test_data",
        True,
        f"More test data needed: {order[0]} and {order[1]} differ by {found['delta']:+.3f} on {ev.metric}, within "
        f"chance ({_p(ev, found['p_value'])}); {how}.",
    )


def _labelled(ev: Evidence) -> bool | None:
    if ev.needs.labelled_data is not None:
        return ev.needs.labelled_data
    return None if ev.train_examples is None else ev.train_examples >= ENOUGH_LABELLED


def _wanted_families(ev: Evidence, candidates: list[str]) -> tuple[set[str], list[Finding]]:
    """The families the needs ask for that the measurement allows, and a finding per need."""
    asks = [
        ("fresh_data", ev.needs.fresh_data, "rag", "knowledge that changes is kept current by re-indexing, not "
         "retraining"),
        ("hallucination_critical", ev.needs.hallucination_critical, "rag", "answers grounded in cited passages can "
         "be checked"),
        ("custom_style", ev.needs.custom_style, "finetune", "tone, vocabulary and format are learned by tuning"),
    ]  # fmt: skip
    in_docs = ev.answers_in_documents
    if in_docs is not None:
        holds = in_docs >= DOCUMENTS_HOLD
        asks.append(("answers_in_documents", holds, "rag", f"{in_docs:.0%} of the test answers appear in the "
                     f"retrieved passages"))  # fmt: skip
    wanted: set[str] = set()
    findings = []
    for rule, asked, family, why in asks:
        if not asked:
            findings.append(Finding(rule, False, _not_asked(rule, ev)))
            continue
        allowed = [a for a in candidates if family in FAMILIES[a]]
        if allowed:
            wanted.add(family)
            findings.append(Finding(rule, True, f"{rule} favours {family} ({why}); within reach of the best: "
                                    f"{', '.join(allowed)}."))  # fmt: skip
        else:
            findings.append(Finding(rule, True, f"{rule} favours {family} ({why}), but the measurement overrules "
                                    f"it: {_overruled(ev, family, candidates[0])}."))  # fmt: skip
    findings.append(_labelled_finding(ev, candidates, wanted))
    return wanted, findings


def _not_asked(rule: str, ev: Evidence) -> str:
    if rule == "answers_in_documents" and ev.answers_in_documents is not None:
        share = ev.answers_in_documents
        lack = " (retrieval can add little)" if share < DOCUMENTS_LACK else ""
        return f"Only {share:.0%} of the test answers appear in the retrieved passages{lack}."
    asked = getattr(ev.needs, rule, None)
    return f"compare.needs.{rule} is {'false' if asked is False else 'not set'}."


def _overruled(ev: Evidence, family: str, best: str) -> str:
    measured = [a for a in ev.scores if family in FAMILIES[a]]
    if not measured:
        return f"no {family} approach was measured"
    worst = ", ".join(_fmt(ev, a) for a in measured)
    return f"{worst} significantly below {_fmt(ev, best)}"


def _labelled_finding(ev: Evidence, candidates: list[str], wanted: set[str]) -> Finding:
    labelled = _labelled(ev)
    count = f" ({ev.train_examples} training examples)" if ev.train_examples is not None else ""
    if labelled is None:
        return Finding("labelled_data", False, "How much labelled data exists is unknown.")
    if labelled:
        return Finding("labelled_data", True, f"Enough labelled data for fine-tuning{count}.")
    wanted.add("no_training")
    return Finding(
        "labelled_data",
        True,
        f"Few labelled examples{count}, under the {ENOUGH_LABELLED} where fine-tuning reliably helps: approaches "
        f"without training are preferred unless a tuned one is significantly better.",
    )


def _pick(ev: Evidence, candidates: list[str], wanted: set[str]) -> str:
    """The candidate that meets most wanted families (no training counts as one), then the cheapest to run."""

    def meets(a: str) -> int:
        families = FAMILIES[a]
        met = len(families & wanted)
        return met + (1 if "no_training" in wanted and "finetune" not in families else 0)

    return min(candidates, key=lambda a: (-meets(a), ev.cost_per_1k.get(a, math.inf), ev.one_off.get(a, 0.0)))


def _recommendation(ev: Evidence, pick: str, best: str, wanted: set[str]) -> Finding:
    why = "the best measured" if pick == best else f"not significantly worse than {best}"
    reasons = sorted(FAMILIES[pick] & wanted)
    needs = f", and it meets what the use case asks for ({', '.join(reasons)})" if reasons else ""
    cost = ev.cost_per_1k.get(pick)
    running = f"; it runs at {cost:.0f} machine-seconds per 1,000 requests" if cost is not None else ""
    return Finding("recommendation", True, f"Recommended: {pick} — {why} ({_fmt(ev, pick)}){needs}{running}.")
