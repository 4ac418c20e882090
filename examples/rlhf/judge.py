"""The independent judge of the movie-review RL run: did reinforcement learning make the continuations positive?

    python examples/rlhf/judge.py runs/movie-grpo      # after `tuneforge run configs/movie-grpo.yaml`

The judge is a TF-IDF + logistic-regression sentiment classifier (scikit-learn) trained here on movie-judge.tsv
(examples/rlhf/fetch.py: the odd-id half of vaderSentiment's rated movie sentences, |mean rating| >= 0.5). The reward
model RL optimised was trained on the even-id half, and RL never sees the judge. It scores the base and the tuned
model's answers to the run's held-out prompts (runs/<name>/predictions.jsonl, written by `tuneforge evaluate`):
share judged positive, with 95% bootstrap intervals and the paired difference, plus a few examples side by side.
Its own held-out accuracy is printed first, so its verdicts can be weighed. Writes runs/<name>/judge.json.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

HERE = Path(__file__).resolve().parent


def train_judge(path: Path, seed: int) -> tuple[object, float, int]:
    """The classifier, its accuracy on a held-out fifth, and its training size."""
    rows = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line]
    random.Random(seed).shuffle(rows)
    cut = len(rows) * 4 // 5
    train, test = rows[:cut], rows[cut:]
    judge = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2), LogisticRegression(C=4.0, max_iter=2000)
    )
    judge.fit([t for _, t in train], [int(y) for y, _ in train])
    accuracy = float(np.mean(judge.predict([t for _, t in test]) == np.array([int(y) for y, _ in test])))
    return judge, accuracy, len(train)


def bootstrap(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--judge-data", type=Path, default=HERE / "data" / "movie-judge.tsv")
    parser.add_argument("--examples", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    judge, accuracy, size = train_judge(args.judge_data, args.seed)
    print(f"judge: TF-IDF + logistic regression on {size} rated sentences, held-out accuracy {accuracy:.3f}")
    rows = [json.loads(line) for line in (args.run_dir / "predictions.jsonl").read_text().splitlines()]
    prompts = [
        json.loads(line)["messages"][-1]["content"]
        for line in (args.run_dir / "data" / "test.jsonl").read_text().splitlines()
    ]
    facts: dict[str, object] = {"judge_accuracy": round(accuracy, 4), "judge_training_sentences": size, "n": len(rows)}
    positive = {}
    for model in ("base", "tuned"):
        answers = [r[model] for r in rows]
        probability = judge.predict_proba(answers)[:, 1]  # type: ignore[attr-defined]
        positive[model] = (probability > 0.5).astype(float)
        low, high = bootstrap(positive[model], 2000, args.seed)
        facts[model] = {
            "positive_share": round(float(positive[model].mean()), 4),
            "interval": [round(low, 4), round(high, 4)],
            "mean_probability": round(float(probability.mean()), 4),
        }
        print(
            f"{model:>5}: {positive[model].mean():.3f} of {len(rows)} continuations judged positive "
            f"(95% CI {low:.3f}-{high:.3f}), mean P(positive) {probability.mean():.3f}"
        )
    gain = positive["tuned"] - positive["base"]
    low, high = bootstrap(gain, 2000, args.seed + 1)
    facts["gain"] = {"mean": round(float(gain.mean()), 4), "interval": [round(low, 4), round(high, 4)]}
    print(f"tuned - base: {gain.mean():+.3f} (95% CI {low:+.3f} to {high:+.3f})")
    evaluation = json.loads((args.run_dir / "eval.json").read_text())
    kl = evaluation.get("details", {}).get("tuned", {}).get("kl_to_base_per_token")
    facts["kl_to_base_per_token"] = kl
    print(f"KL(tuned || base) per answer token on the tuned answers: {kl}")
    shown = []
    for i in range(min(args.examples, len(rows))):
        shown.append(
            {"prompt": prompts[i] if i < len(prompts) else "", "base": rows[i]["base"], "tuned": rows[i]["tuned"]}
        )
        print(f"\n{shown[-1]['prompt']}\n  base : {rows[i]['base'][:160]!r}\n  tuned: {rows[i]['tuned'][:160]!r}")
    facts["examples"] = shown
    (args.run_dir / "judge.json").write_text(json.dumps(facts, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
