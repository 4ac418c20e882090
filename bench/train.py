"""LoRA and full SFT of the embedded model: tuneforge against TRL's SFTTrainer (+ PEFT) in the same run.

    python bench/train.py                    # LoRA and full, 8 timed steps each after 1 warm-up step (~20 min)
    python bench/train.py --steps 3 --only lora
    python bench/train.py --only lora --tools tuneforge --set train.micro_batch_tokens=null   # one lever, measured

The data is a fixed, seeded chat set (`--examples` 300; German and English words from faker's lorem lists, each
example 30-400 tokens with the model's chat template). Every variant trains max_seq_len 512, effective batch 8,
the same number of optimizer steps, in its own process (so its peak RSS is its own):
  tuneforge  - `tuneforge train` as configured below (its defaults otherwise; `--set key=value` changes one);
  TRL        - `SFTTrainer(model, SFTConfig(...), peft_config=LoraConfig(...))` with the settings a user would set
               (batch, steps, learning rate, max_length) and TRL's defaults for everything else.
Printed per variant: real tokens/s (non-padding tokens the optimizer steps saw, after warm-up), wall time of the
timed steps, peak RSS, the held-out loss of the assistant answers after training (the same function and examples
for both), the precision it trained in, the model FLOP utilisation (6N FLOPs per token for full, 4N for LoRA,
against this CPU's matmul peak in that precision, measured at the start) and the ratios tuneforge / TRL.
TRL's defaults include bf16 autocast and gradient checkpointing. `pip install -e ".[bench]"` first (TRL is not a
tuneforge dependency).
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
from typing import Any

SYSTEM = "Answer briefly."
LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
LEARNING_RATE = {"lora": 2e-4, "full": 2e-5}
BATCH, MAX_LEN, HELD_OUT = 8, 512, 40
ANSWER_ONLY = "trl.answer_only"  # --set trl.answer_only: TRL gets prompt-completion rows (loss on the answers only)
TRL_SEED = "trl.seed="  # --set trl.seed=N: TRL's seed (tuneforge's is train.seed)


def write_data(path: Path, n: int, seed: int = 0) -> None:
    """n chat examples, lengths spread evenly from ~30 to ~400 tokens with the chat template."""
    from faker.providers.lorem.de_DE import Provider as De
    from faker.providers.lorem.en_US import Provider as En

    rng = random.Random(seed)
    vocab = [list(En.word_list), list(De.word_list)]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            words = vocab[i % 2]
            total = rng.randint(4, 175)  # words (~2.1 tokens each); the template and system prompt add ~25 tokens
            asked = max(2, int(total * rng.uniform(0.2, 0.6)))
            question = " ".join(rng.choice(words) for _ in range(asked)) + "?"
            answer = " ".join(rng.choice(words) for _ in range(max(1, total - asked))) + "."
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            fh.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def held_out_loss(model: Any, model_dir: str, data: Path) -> float:
    """Mean loss per answer token of the last HELD_OUT examples (never trained on), tuneforge's SFT encoding."""
    from tuneforge.config import load_config
    from tuneforge.models import load_tokenizer
    from tuneforge.train.lm import SFT
    from tuneforge.train.tasks import TaskContext, mean_loss

    cfg = load_config(None, [f"model.name={model_dir}", f"data.max_seq_len={MAX_LEN}"])
    tokenizer = load_tokenizer(model_dir)
    examples = SFT.load(data, tokenizer, TaskContext.of(cfg))
    return float(mean_loss(model, SFT, examples, cfg.train, BATCH, int(tokenizer.pad_token_id)))


def run_tuneforge(
    method: str, data: Path, held: Path, steps: int, warmup: int, out: Path, overrides: list[str]
) -> dict[str, Any]:
    from tuneforge.config import load_config
    from tuneforge.data import prepare
    from tuneforge.models import load_model
    from tuneforge.train import train

    cfg = load_config(
        None,
        [
            f"data.path={data}",
            f"output_dir={out}",
            "name=bench",
            "data.val_size=0.0",
            "data.test_size=0.0",
            "data.estimate=false",
            "clean.dedup=false",
            "privacy.mode='off'",
            f"data.max_seq_len={MAX_LEN}",
            f"train.method={method}",
            *([f"train.lora_r={LORA['r']}", f"train.lora_alpha={LORA['lora_alpha']}"] if method == "lora" else []),
            f"train.batch_size={BATCH}",
            f"train.learning_rate={LEARNING_RATE[method]}",
            f"train.max_steps={warmup + steps}",
            "train.save_steps=100000",
            "train.seed=0",
            *(o for o in overrides if not o.startswith("trl.")),
        ],
    )
    prepare(cfg)
    result = train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    done = {r["step"]: r["tokens_per_s"] * r["elapsed_s"] for r in rows}  # cumulative real tokens per step
    seconds = rows[-1]["elapsed_s"] - rows[warmup - 1]["elapsed_s"] if warmup else rows[-1]["elapsed_s"]
    tokens = done[rows[-1]["step"]] - (done[warmup] if warmup else 0.0)
    model = load_model(str(result.model_dir)) if method == "full" else _with_adapter(cfg, result.model_dir)
    held_out = held_out_loss(model, cfg.model.name, held)
    return {"tokens": tokens, "seconds": seconds, "held_out_loss": held_out, "precision": result.precision}


def _with_adapter(cfg: Any, adapter_dir: Path) -> Any:
    from tuneforge.models import load_adapter, load_model

    return load_adapter(load_model(cfg.model.name), adapter_dir, "bench").eval()


def run_trl(
    method: str, data: Path, held: Path, steps: int, warmup: int, out: Path, overrides: list[str]
) -> dict[str, Any]:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tuneforge.models import ensure_embedded

    model_dir = str(ensure_embedded())  # the converted safetensors folder of the embedded model
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    if ANSWER_ONLY in overrides:  # prompt-completion rows: TRL then takes the loss on the answers only
        rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    args = SFTConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=BATCH,
        max_steps=warmup + steps,
        learning_rate=LEARNING_RATE[method],
        max_length=MAX_LEN,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=next((int(o[len(TRL_SEED) :]) for o in overrides if o.startswith(TRL_SEED)), 0),
        use_cpu=True,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft = LoraConfig(**LORA, task_type="CAUSAL_LM") if method == "lora" else None
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=peft,
    )
    seen: list[int] = []
    collate = trainer.data_collator

    def counting(features: list[Any]) -> Any:  # real (non-padding) tokens of every batch, in step order
        batch = collate(features)
        seen.append(
            int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        )
        return batch

    trainer.data_collator = counting
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter())

    trainer.add_callback(Clock())
    start = time.perf_counter()
    trainer.train()
    stamps = [start, *times]
    seconds = stamps[-1] - stamps[warmup]
    tokens = float(sum(seen[warmup : warmup + steps]))
    held_out = held_out_loss(trainer.model.eval(), model_dir, held)
    return {
        "tokens": tokens,
        "seconds": seconds,
        "held_out_loss": held_out,
        "precision": "bf16" if args.bf16 else "fp32",
    }


def peak_matmul_flops(dtype: str, seconds: float = 3.0) -> float:
    """This CPU's matmul FLOP/s in `dtype` with torch's threads (the ceiling a training step could reach)."""
    import torch

    kind = torch.float32 if dtype == "fp32" else torch.bfloat16
    a, b = torch.randn(2048, 2048, dtype=kind), torch.randn(2048, 2048, dtype=kind)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 2048**3 * count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--examples", type=int, default=300, help="training examples (+40 held out)")
    parser.add_argument("--only", choices=["lora", "full"], help="run one method only")
    parser.add_argument("--tools", default="trl,tuneforge", help="which to run, comma-separated (default both)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a tuneforge config override (repeatable); {ANSWER_ONLY}: TRL's loss on the answers only; "
        f"{TRL_SEED}N: TRL's seed",
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        tool, method = args.variant.split("-")
        work = Path(args.workdir)
        runner = run_tuneforge if tool == "tuneforge" else run_trl
        held, out = work / "held.jsonl", work / tool
        result = runner(method, work / "train.jsonl", held, args.steps, args.warmup, out, args.set)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    from tuneforge.models import load_model

    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        work = Path(tmp)
        write_data(work / "all.jsonl", args.examples + HELD_OUT)
        lines = (work / "all.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (work / "train.jsonl").write_text("".join(lines[: args.examples]), encoding="utf-8")
        (work / "held.jsonl").write_text("".join(lines[args.examples :]), encoding="utf-8")
        n_params = sum(p.numel() for p in load_model("smollm2-135m-instruct").parameters())
        peak = {dtype: peak_matmul_flops(dtype) for dtype in ("fp32", "bf16")}
        print(
            f"CPU matmul peak fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f}; "
            f"model {n_params / 1e6:.1f}M parameters"
        )
        methods = [args.only] if args.only else ["lora", "full"]
        for method in methods:
            results = {}
            for tool in args.tools.split(","):
                cmd = [sys.executable, __file__, "--variant", f"{tool}-{method}", "--workdir", tmp]
                cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
                cmd += [f"--set={o}" for o in args.set]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{tool}-{method} failed:\n{done.stderr[-3000:]}")
                results[tool] = json.loads(done.stdout.strip().splitlines()[-1])
            report(method, results, n_params, peak, args.steps)


def report(method: str, results: dict[str, dict[str, Any]], n_params: int, peak: dict[str, float], steps: int) -> None:
    per_token = (4 if method == "lora" else 6) * n_params
    print(f"\n{method} SFT, {steps} timed steps of batch {BATCH}, max_seq_len {MAX_LEN}")
    print(
        f"{'':<11}{'real tok/s':>11}{'wall s':>8}{'peak RSS MiB':>14}{'held-out loss':>15}{'precision':>10}{'MFU':>7}"
    )
    for tool, r in results.items():
        speed = r["tokens"] / r["seconds"]
        print(
            f"{tool:<11}{speed:>11.1f}{r['seconds']:>8.1f}{r['peak_rss_mib']:>14.0f}{r['held_out_loss']:>15.4f}"
            f"{r['precision']:>10}{100 * speed * per_token / peak[r['precision']]:>6.1f}%"
        )
    if len(results) < 2:
        return
    ours, theirs = results["tuneforge"], results["trl"]
    speedup = (ours["tokens"] / ours["seconds"]) / (theirs["tokens"] / theirs["seconds"])
    print(
        f"tuneforge / TRL: {speedup:.2f}x real tokens/s, {ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x peak RSS,"
        f" held-out loss {ours['held_out_loss']:.4f} vs {theirs['held_out_loss']:.4f}"
    )


if __name__ == "__main__":
    main()
