"""Streaming speed and memory of `tuneforge prepare` on a large JSONL file, against the standard HF stack.

    python bench/prepare.py                 # 1,000,000 lines (about 15 minutes on 2 cores)
    python bench/prepare.py --lines 50000   # a quick look

Writes a seeded chat file of N lines (German and English turns of 8-60 words drawn from faker's lorem word lists
plus service topics: 1% exact and 1% near duplicates, ~2% with personal data), then runs, each in its own
process so that peak RSS is its own:
  tuneforge  - the whole prepare stage: read, validate, normalise, detect personal data, exact and near-duplicate
               removal, leakage check, token count with the model's chat template, split, write (embedded
               model's tokenizer; the training estimate is off: it loads the model, which is not data work);
  baseline   - what a typical script does with the standard stack: datasets.load_dataset("json") and a batched
               .map(apply_chat_template + tokenize) for the lengths (no validation, cleaning or de-duplication).
Prints lines/s, wall time and peak RSS of each.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPICS_DE = ["Lieferung", "Rechnung", "Vertrag", "Kündigung", "Bestellung", "Garantie", "Rücksendung", "Termin"]
TOPICS_EN = ["delivery", "invoice", "contract", "refund", "order", "warranty", "return", "appointment"]


def write_data(path: Path, n: int, seed: int = 0) -> None:
    """n chat lines: 1% exact duplicates, 1% near duplicates (one word changed), ~2% with an e-mail or phone."""
    from faker.providers.lorem.de_DE import Provider as De
    from faker.providers.lorem.en_US import Provider as En

    rng = random.Random(seed)
    vocab = {0: list(En.word_list) + TOPICS_EN, 1: list(De.word_list) + TOPICS_DE}  # 979 and 515 words
    with path.open("w", encoding="utf-8") as fh:
        previous = ""
        for i in range(n):
            if previous and rng.random() < 0.02:
                if rng.random() < 0.5:
                    fh.write(previous)
                else:  # the same question with one word swapped, a near duplicate
                    row = json.loads(previous)
                    words = row["messages"][0]["content"].split(" ")
                    words[rng.randrange(len(words) - 1)] = rng.choice(vocab[i % 2])
                    row["messages"][0]["content"] = " ".join(words)
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                continue
            words = vocab[i % 2]
            question = " ".join(rng.choices(words, k=rng.randint(8, 40))) + f" #{i}?"
            if rng.random() < 0.02:
                question += f" Kontakt: kunde{i}@example.com" if i % 2 else f" Call me on +49 170 {1000000 + i}"
            answer = " ".join(rng.choices(words, k=rng.randint(5, 60))) + "."
            row = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
            previous = json.dumps(row, ensure_ascii=False) + "\n"
            fh.write(previous)


def run_tuneforge(data: Path, out: Path) -> dict[str, float]:
    from tuneforge.config import load_config
    from tuneforge.data import prepare

    settings = [f"data.path={data}", f"output_dir={out}", "name=bench", "data.max_seq_len=1024", "data.estimate=false"]
    cfg = load_config(None, settings)
    start = time.perf_counter()
    result = prepare(cfg)
    seconds = time.perf_counter() - start
    kept = sum(result.counts.values())
    return {"seconds": seconds, "kept": kept, "removed": sum(result.report["removed"].values())}


def run_baseline(data: Path, out: Path) -> dict[str, float]:
    import datasets

    from tuneforge.models import load_tokenizer

    datasets.disable_progress_bars()
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(data), split="train", cache_dir=str(out / "hf-cache"))

    def lengths(batch: dict) -> dict:
        texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in batch["messages"]]
        return {"n_tokens": [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]}

    ds = ds.map(lengths, batched=True, batch_size=1000)
    total = sum(ds["n_tokens"])
    return {"seconds": time.perf_counter() - start, "kept": len(ds), "tokens": total}


def child(which: str, data: Path, out: Path) -> None:
    result = (run_tuneforge if which == "tuneforge" else run_baseline)(data, out)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["tuneforge", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chat.jsonl"
        write_data(data, args.lines)
        size = data.stat().st_size / 2**20
        print(f"{args.lines:,} lines, {size:,.0f} MiB of JSONL")
        results = {}
        for which in ("tuneforge", "baseline"):
            cmd = [sys.executable, __file__, "--child", which, "--data", str(data), "--out", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[which] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[which]
            print(
                f"{which:<10} {args.lines / r['seconds']:>9,.0f} lines/s  {r['seconds']:>7.1f} s  "
                f"peak RSS {r['peak_rss_mib']:>7,.0f} MiB  kept {r['kept']:,}"
                + (f" (removed {r['removed']:,})" if "removed" in r else "")
            )
        t, b = results["tuneforge"], results["baseline"]
        speed, rss = b["seconds"] / t["seconds"], t["peak_rss_mib"] / b["peak_rss_mib"]
        print(f"ratio tuneforge/baseline: speed {speed:.2f}x, RSS {rss:.2f}x")


if __name__ == "__main__":
    main()
