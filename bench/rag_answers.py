"""Answer quality with and without retrieval: the embedded model (SmolLM2-135M-Instruct) answers the document-QA
questions of bench/rag_sets.py ("which option of `cmd` does ...?", references: the option's spellings) once from the
question alone and once with the passages `tuneforge ask` would give it, on the same questions; scores with 95%
bootstrap intervals and the paired significance test of the evaluation stage.

    python3 bench/rag_answers.py --set qa-de --questions 100
    python3 bench/rag_answers.py --set qa-en --questions 100

The index holds the pages the sampled questions come from plus as many other pages of the set (distractors).
Metrics per question, each the best over the accepted spellings: `contains` (the option appears in the answer as a
whole token, case-sensitive: `-a` is not `-A`), `exact_match` and `token_f1` (tuneforge.metrics, SQuAD-normalised).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tuneforge.config import EMBEDDED_MODEL, RagConfig  # noqa: E402
from tuneforge.evaluation.stats import compare, interval, resample_indices  # noqa: E402
from tuneforge.generation import SamplingParams, generate_texts  # noqa: E402
from tuneforge.metrics.text import exact_match, token_f1  # noqa: E402
from tuneforge.models import load_model, load_tokenizer  # noqa: E402
from tuneforge.rag import Index, build_index, rag_messages, retrieve_sources  # noqa: E402

INSTRUCTION = {"de": " Antworte nur mit der Option.", "en": " Answer with the option only."}


def contains(answer: str, option: str) -> float:
    return float(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", answer) is not None)


def scores(answers: list[str], questions: list[dict]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, metric in (("contains", contains), ("exact_match", exact_match), ("token_f1", token_f1)):
        out[name] = np.array(
            [max(metric(a, ref) for ref in q["answers"]) for a, q in zip(answers, questions, strict=True)]
        )
    return out


def sample(set_dir: Path, n: int, distractors: int, work: Path) -> tuple[list[dict], Path]:
    questions = [json.loads(line) for line in (set_dir / "qa.jsonl").read_text().splitlines()]
    random.Random(0).shuffle(questions)
    questions = questions[:n]
    docs = set_dir / json.loads((set_dir / "set.json").read_text()).get("docs", "docs")
    pages = {r["path"] for q in questions for r in q["relevant"]}
    others = [str(p.relative_to(docs)) for p in sorted(docs.rglob("*.txt")) if str(p.relative_to(docs)) not in pages]
    random.Random(1).shuffle(others)
    for page in sorted(pages) + others[:distractors]:
        (work / "docs" / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(docs / page, work / "docs" / page)
    return questions, work / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("bench/.cache/rag_sets"))
    parser.add_argument("--set", default="qa-de")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--distractors", type=int, default=100)
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        questions, docs = sample(args.data / args.set, args.questions, args.distractors, Path(tmp))
        cfg = RagConfig(sources=[str(docs)], min_similarity=None)
        summary = build_index(cfg, Path(tmp) / "index", log=lambda _: None)
        print(
            f"{args.set}: {len(questions)} questions; index of {summary.documents} pages, "
            f"{summary.stats['chunks']} chunks"
        )
        index = Index(Path(tmp) / "index")
        tokenizer = load_tokenizer(args.model)
        model = load_model(args.model).eval()

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        lang = questions[0]["lang"]
        plain, with_rag, found = [], [], 0
        for q in questions:
            ask = [{"role": "user", "content": q["question"] + INSTRUCTION[lang]}]
            sources, _ = retrieve_sources(q["question"], index, cfg)
            found += any(s.path.split("/", 1)[1] == q["relevant"][0]["path"] for s in sources)
            plain.append(ask)
            with_rag.append(rag_messages(ask, sources, count, cfg.context_tokens)[0])
        params = SamplingParams(max_new_tokens=24)
        started = time.perf_counter()
        answers = {
            "without RAG": generate_texts(model, tokenizer, plain, params, 8, "without"),
            "with RAG": generate_texts(model, tokenizer, with_rag, params, 4, "with"),
        }
        print(f"retrieval put the question's page among the passages for {found}/{len(questions)}; "
              f"generation {time.perf_counter() - started:.0f}s")  # fmt: skip
        report(questions, answers)


def report(questions: list[dict], answers: dict[str, list[str]]) -> None:
    rows = resample_indices(len(questions), 2000)
    per = {name: scores(texts, questions) for name, texts in answers.items()}
    for metric in per["with RAG"]:
        cells = []
        for name in answers:
            s = per[name][metric]
            low, high = interval(s[rows].mean(axis=1))
            cells.append(f"{name} {s.mean():.3f} [{low:.3f}, {high:.3f}]")
        a, b = per["without RAG"][metric], per["with RAG"][metric]
        diff = compare(a[rows].mean(axis=1), b[rows].mean(axis=1), float(b.mean() - a.mean()))
        print(f"  {metric:11s} " + "  ".join(cells) + f"  difference {diff.delta:+.3f} p={diff.p_value:.4f}")
    for q, plain, rag in list(zip(questions, answers["without RAG"], answers["with RAG"], strict=True))[:3]:
        print(f"\nQ: {q['question']}\nreference: {q['answers']}\nwithout: {plain!r}\nwith:    {rag!r}")


if __name__ == "__main__":
    main()
