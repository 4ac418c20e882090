"""Training speed and memory: tuneforge's LoRA SFT step against the standard Hugging Face way, same batches.

The baseline is what the transformers docs teach: `model(input_ids, attention_mask, labels=labels).loss`, which
computes logits for every position. tuneforge's `loss_sum` computes logits only where a label follows (the
assistant answer), so the 49k-wide output layer never sees the prompt. Each variant runs in its own process so
peak RSS is its own.

    python bench/train_speed.py                 # embedded SmolLM2-135M-Instruct, 6 steps of 8 examples
    python bench/train_speed.py --steps 3 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "contracts" / "train.jsonl"


def measure(variant: str, model_name: str, steps: int, batch_size: int, warmup: int) -> dict[str, float]:
    """Run warmup + steps optimizer steps of LoRA SFT; tokens/s over the timed steps and peak RSS."""
    import torch

    from tuneforge.config import RunConfig
    from tuneforge.models import load_model, load_tokenizer
    from tuneforge.train.auto import Hyper
    from tuneforge.train.lm import collate, load_sft, loss_sum
    from tuneforge.train.methods import apply_lora
    from tuneforge.train.tasks import TaskContext

    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_name)
    cfg = RunConfig()
    model = apply_lora(load_model(model_name), cfg.train, Hyper(1.0, batch_size, 1e-4, 16, 32))
    model.train()
    examples = load_sft(DATA, tokenizer, TaskContext.of(cfg))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens, seconds, losses = 0, 0.0, []
    for step in range(warmup + steps):
        batch = collate(examples[step * batch_size : (step + 1) * batch_size], int(tokenizer.pad_token_id))
        start = time.perf_counter()
        if variant == "tuneforge":
            loss = loss_sum(model, batch) / batch.n_loss
        else:  # the standard transformers way: logits for every position, mean over label tokens
            loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            seconds += time.perf_counter() - start
            tokens += batch.n_tokens
            losses.append(float(loss))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "tokens_per_s": tokens / seconds,
        "s_per_step": seconds / steps,
        "peak_rss_mib": peak_mib,
        "loss": losses[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model.name to train (default: embedded)")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (memory first-touch, caches)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--variant", choices=["tuneforge", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.model, args.steps, args.batch_size, args.warmup)))
        return
    results = {}
    for variant in ("hf", "tuneforge"):
        cmd = [sys.executable, __file__, "--variant", variant, "--model", args.model, "--steps", str(args.steps)]
        cmd += ["--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    print(f"LoRA SFT, {args.model}, batch {args.batch_size}, {args.steps} timed steps (contracts example)")
    print(f"{'variant':<26}{'tokens/s':>10}{'s/step':>9}{'peak RSS MiB':>14}{'loss step 1':>13}")
    names = {"hf": "HF baseline (labels=)", "tuneforge": "tuneforge loss_sum"}
    for variant, r in results.items():
        row = f"{names[variant]:<26}{r['tokens_per_s']:>10.1f}{r['s_per_step']:>9.2f}"
        print(row + f"{r['peak_rss_mib']:>14.0f}{r['loss']:>13.4f}")
    speedup = results["tuneforge"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    print(f"speed-up {speedup:.2f}x; same loss: {abs(results['hf']['loss'] - results['tuneforge']['loss']) < 1e-3}")


if __name__ == "__main__":
    main()
