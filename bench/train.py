"""Training of the embedded model, tuneforge against the standard Hugging Face trainer in the same run.

    python bench/train.py                    # LoRA and full SFT, 8 timed steps each after 1 warm-up step (~20 min)
    python bench/train.py --steps 3 --only lora
    python bench/train.py --only lora --tools tuneforge --set train.micro_batch_tokens=null   # one lever, measured
    python bench/train.py --only classify    # sentiment classification, one epoch (237 steps) each
    python bench/train.py --only classify --steps 40

SFT (`lora`, `full`): a fixed, seeded chat set (`--examples` 300; German and English words from faker's lorem
lists, each example 30-400 tokens with the model's chat template), max_seq_len 512, effective batch 8:
  tuneforge  - `tuneforge train` as configured below (its defaults otherwise; `--set key=value` changes one);
  TRL        - `SFTTrainer(model, SFTConfig(...), peft_config=LoraConfig(...))` with the settings a user would set
               (batch, steps, learning rate, max_length) and TRL's defaults for everything else.
TRL's defaults include bf16 autocast and gradient checkpointing.

`classify`: a sequence-classification head (AutoModelForSequenceClassification, 3 classes) with LoRA r 16, alpha 32
on all linear layers (PEFT task_type SEQ_CLS, so the new head trains in full), batch 16, max_seq_len 128, learning
rate 1e-3 (configs/reviews.yaml), class weights none, on 3,792 seeded German and English shop reviews from
examples/reviews/generate.py (6-65 tokens, 28 on average; positive, negative, neutral): one epoch is 237 steps,
the default (`--steps N`: N timed steps after the warm-up). Held out: 400 reviews in wordings never trained on.
  tuneforge  - `tuneforge train` with train.task=classify, train.method=lora (its defaults otherwise);
  Trainer    - transformers' `Trainer` as its docs teach: tokenizer(truncation=True, max_length=128),
               `DataCollatorWithPadding`, `get_peft_model(model, LoraConfig(..., task_type="SEQ_CLS"))`, and
               `TrainingArguments` with batch, steps, learning rate and bf16=True (what a user on a CPU with AMX
               tiles would set: Trainer's default is fp32 on CPU); its defaults
               otherwise: random order with no length grouping, fused AdamW, linear decay without warm-up (tuneforge:
               cosine after 10% warm-up), clipping at 1.0, no gradient checkpointing, no dataloader workers.
               TRL has no classification trainer.

Every variant trains the same number of optimizer steps, in its own process (so its peak RSS is its own). Printed per
variant: real tokens/s (non-padding tokens the optimizer steps saw, after warm-up), examples/s, wall time of the
timed steps, peak RSS, the held-out loss (SFT: of the assistant answers; classify: cross-entropy, and accuracy) after
training (the same function and examples for both), the precision it trained in, the model FLOP utilisation (6N
FLOPs per token for full, 4N for LoRA, against this CPU's matmul peak in that precision, measured at the start) and
the ratios tuneforge / baseline. `pip install -e ".[bench]"` first (TRL is not a tuneforge dependency).
"""

from __future__ import annotations

import argparse
import importlib.util
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
LEARNING_RATE = {"lora": 2e-4, "full": 2e-5, "classify": 1e-3}
BATCH = {"lora": 8, "full": 8, "classify": 16}
MAX_LEN = {"lora": 512, "full": 512, "classify": 128}
HELD_OUT = {"lora": 40, "full": 40, "classify": 400}
BASELINE = {"lora": "trl", "full": "trl", "classify": "trainer"}
REVIEWS, LABELS = 3792, ["negative", "neutral", "positive"]  # classify: 237 steps of 16, the shape
ANSWER_ONLY = "trl.answer_only"  # --set trl.answer_only: TRL gets prompt-completion rows (loss on the answers only)
TRL_SEED = "trl.seed="  # --set trl.seed=N: the baseline's seed, TRL's or Trainer's (tuneforge's is train.seed)


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


def write_reviews(train: Path, held: Path, n: int, seed: int = 0) -> None:
    """n shop reviews in training wordings and HELD_OUT["classify"] in wordings never trained on, drawn by
    examples/reviews/generate.py's `review` from one seeded generator."""
    path = Path(__file__).resolve().parents[1] / "examples" / "reviews" / "generate.py"
    spec = importlib.util.spec_from_file_location("reviews_generate", path)
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    rng = random.Random(seed)
    for target, count, held_out in ((train, n, False), (held, HELD_OUT["classify"], True)):
        rows = [generate.review(rng, held_out) for _ in range(count)]
        target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def held_out_scores(model: Any, model_dir: str, data: Path, method: str) -> dict[str, float]:
    """The held-out examples' (never trained on) mean loss, tuneforge's encoding and loss: per answer token for SFT,
    cross-entropy per review for classify (and its accuracy)."""
    from tuneforge.config import load_config
    from tuneforge.models import load_tokenizer
    from tuneforge.train.tasks import TASKS, TaskContext, mean_loss

    task = "classify" if method == "classify" else "sft"
    cfg = load_config(
        None,
        [f"model.name={model_dir}", f"data.max_seq_len={MAX_LEN[method]}", f"train.task={task}"]
        + ([f"data.labels=[{','.join(LABELS)}]"] if method == "classify" else []),
    )
    tokenizer = load_tokenizer(model_dir)
    pad_id = int(tokenizer.pad_token_id)
    examples = TASKS[task].load(data, tokenizer, TaskContext.of(cfg))
    scores = {"held_out_loss": float(mean_loss(model, TASKS[task], examples, cfg.train, BATCH[method], pad_id))}
    if method == "classify":
        from tuneforge.train.classify import probabilities

        predicted = probabilities(model, examples, 32, pad_id, "cpu").argmax(-1)
        scores["held_out_accuracy"] = float(sum(int(p) == e.label for p, e in zip(predicted, examples, strict=True)))
        scores["held_out_accuracy"] /= len(examples)
    return scores


def tuneforge_settings(method: str, data: Path, out: Path, max_steps: int) -> list[str]:
    """The config overrides of tuneforge's `method` run (also bench/profile_step.py's runs)."""
    task = ["train.task=classify", f"data.labels=[{','.join(LABELS)}]"] if method == "classify" else []
    return [
        f"data.path={data}",
        f"output_dir={out}",
        "name=bench",
        "data.val_size=0.0",
        "data.test_size=0.0",
        "data.estimate=false",
        "clean.dedup=false",
        "privacy.mode='off'",
        f"data.max_seq_len={MAX_LEN[method]}",
        *task,
        f"train.method={'full' if method == 'full' else 'lora'}",
        *([f"train.lora_r={LORA['r']}", f"train.lora_alpha={LORA['lora_alpha']}"] if method != "full" else []),
        f"train.batch_size={BATCH[method]}",
        f"train.learning_rate={LEARNING_RATE[method]}",
        f"train.max_steps={max_steps}",
        "train.save_steps=100000",
        "train.seed=0",
    ]


def run_tuneforge(
    method: str, data: Path, held: Path, steps: int, warmup: int, out: Path, overrides: list[str]
) -> dict[str, Any]:
    from tuneforge.config import load_config
    from tuneforge.data import prepare
    from tuneforge.models import load_model
    from tuneforge.train import train

    settings = tuneforge_settings(method, data, out, warmup + steps)
    cfg = load_config(None, [*settings, *(o for o in overrides if not o.startswith("trl."))])
    prepare(cfg)
    result = train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    done = {r["step"]: r["tokens_per_s"] * r["elapsed_s"] for r in rows}  # cumulative real tokens per step
    seconds = rows[-1]["elapsed_s"] - rows[warmup - 1]["elapsed_s"] if warmup else rows[-1]["elapsed_s"]
    tokens = done[rows[-1]["step"]] - (done[warmup] if warmup else 0.0)
    model = load_model(str(result.model_dir)) if method == "full" else _with_adapter(cfg, result.model_dir, method)
    scores = held_out_scores(model, cfg.model.name, held, method)
    return {"tokens": tokens, "seconds": seconds, **scores, "precision": result.precision}


def _with_adapter(cfg: Any, adapter_dir: Path, method: str) -> Any:
    from tuneforge.models import load_adapter, load_model

    base = load_model(cfg.model.name, labels=LABELS if method == "classify" else None)
    return load_adapter(base, adapter_dir, "bench").eval()


def run_trl(
    method: str, data: Path, held: Path, steps: int, warmup: int, out: Path, overrides: list[str]
) -> dict[str, Any]:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tuneforge.models import ensure_embedded

    model_dir = str(ensure_embedded())  # the converted safetensors folder of the embedded model
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    if ANSWER_ONLY in overrides:  # prompt-completion rows: TRL then takes the loss on the answers only
        rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    args = SFTConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=BATCH[method],
        max_steps=warmup + steps,
        learning_rate=LEARNING_RATE[method],
        max_length=MAX_LEN[method],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=_baseline_seed(overrides),
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
    tokens, seconds = _timed_training(trainer, steps, warmup)
    scores = held_out_scores(trainer.model.eval(), model_dir, held, method)
    return {"tokens": tokens, "seconds": seconds, **scores, "precision": "bf16" if args.bf16 else "fp32"}


def run_trainer(
    method: str, data: Path, held: Path, steps: int, warmup: int, out: Path, overrides: list[str]
) -> dict[str, Any]:
    """transformers' Trainer on the classification head, as its sequence-classification guide teaches (with PEFT)."""
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from tuneforge.models import ensure_embedded

    model_dir = str(ensure_embedded())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    index = {label: i for i, label in enumerate(LABELS)}
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    dataset = datasets.Dataset.from_list([{"text": r["text"], "label": index[r["label"]]} for r in rows])
    dataset = dataset.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=MAX_LEN[method]), batched=True, remove_columns="text"
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id=index
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # a decoder pools its last non-padding token
    model = get_peft_model(model, LoraConfig(**LORA, task_type="SEQ_CLS"))
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=BATCH[method],
        max_steps=warmup + steps,
        learning_rate=LEARNING_RATE[method],
        bf16=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=_baseline_seed(overrides),
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    tokens, seconds = _timed_training(trainer, steps, warmup)
    scores = held_out_scores(trainer.model.eval(), model_dir, held, method)
    return {"tokens": tokens, "seconds": seconds, **scores, "precision": "bf16" if args.bf16 else "fp32"}


def _baseline_seed(overrides: list[str]) -> int:
    return next((int(o[len(TRL_SEED) :]) for o in overrides if o.startswith(TRL_SEED)), 0)


def _timed_training(trainer: Any, steps: int, warmup: int) -> tuple[float, float]:
    """Train; the real (non-padding) tokens and the seconds of the steps after the warm-up."""
    from transformers import TrainerCallback

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
    return float(sum(seen[warmup : warmup + steps])), stamps[-1] - stamps[warmup]


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
    parser.add_argument(
        "--steps", type=int, help="timed optimizer steps per variant (default: SFT 8; classify the rest of one epoch)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--examples", type=int, default=300, help="SFT training examples (+40 held out)")
    parser.add_argument("--only", choices=["lora", "full", "classify"], help="run one method only")
    parser.add_argument(
        "--tools",
        default="baseline,tuneforge",
        help="which to run, comma-separated (default both; baseline: TRL for SFT, Trainer for classify)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a tuneforge config override (repeatable); {ANSWER_ONLY}: TRL's loss on the answers only; "
        f"{TRL_SEED}N: the baseline's seed",
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        tool, method = args.variant.split("-")
        work = Path(args.workdir)
        runner = {"tuneforge": run_tuneforge, "trl": run_trl, "trainer": run_trainer}[tool]
        data = "reviews" if method == "classify" else "chat"
        held, out = work / f"{data}-held.jsonl", work / tool
        result = runner(method, work / f"{data}.jsonl", held, args.steps, args.warmup, out, args.set)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    from tuneforge.models import load_model

    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        work = Path(tmp)
        write_data(work / "all.jsonl", args.examples + HELD_OUT["lora"])
        lines = (work / "all.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (work / "chat.jsonl").write_text("".join(lines[: args.examples]), encoding="utf-8")
        (work / "chat-held.jsonl").write_text("".join(lines[args.examples :]), encoding="utf-8")
        write_reviews(work / "reviews.jsonl", work / "reviews-held.jsonl", REVIEWS)
        n_params = sum(p.numel() for p in load_model("smollm2-135m-instruct").parameters())
        peak = {dtype: peak_matmul_flops(dtype) for dtype in ("fp32", "bf16")}
        print(
            f"CPU matmul peak fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f}; "
            f"model {n_params / 1e6:.1f}M parameters"
        )
        methods = [args.only] if args.only else ["lora", "full"]
        for method in methods:
            steps = args.steps or (REVIEWS // BATCH[method] - args.warmup if method == "classify" else 8)
            results = {}
            for tool in args.tools.split(","):
                tool = BASELINE[method] if tool == "baseline" else tool
                cmd = [sys.executable, __file__, "--variant", f"{tool}-{method}", "--workdir", tmp]
                cmd += ["--steps", str(steps), "--warmup", str(args.warmup)]
                cmd += [f"--set={o}" for o in args.set]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{tool}-{method} failed:\n{done.stderr[-3000:]}")
                results[tool] = json.loads(done.stdout.strip().splitlines()[-1])
            report(method, results, n_params, peak, steps)


def report(method: str, results: dict[str, dict[str, Any]], n_params: int, peak: dict[str, float], steps: int) -> None:
    per_token = (6 if method == "full" else 4) * n_params
    what = "classification (LoRA)" if method == "classify" else f"{method} SFT"
    print(f"\n{what}, {steps} timed steps of batch {BATCH[method]}, max_seq_len {MAX_LEN[method]}")
    print(
        f"{'':<11}{'real tok/s':>11}{'ex/s':>7}{'wall s':>8}{'peak RSS MiB':>14}{'held-out loss':>15}"
        f"{'accuracy':>10}{'precision':>10}{'MFU':>7}"
    )
    for tool, r in results.items():
        speed = r["tokens"] / r["seconds"]
        accuracy = f"{r['held_out_accuracy']:.4f}" if "held_out_accuracy" in r else "-"
        print(
            f"{tool:<11}{speed:>11.1f}{steps * BATCH[method] / r['seconds']:>7.1f}{r['seconds']:>8.1f}"
            f"{r['peak_rss_mib']:>14.0f}{r['held_out_loss']:>15.4f}{accuracy:>10}{r['precision']:>10}"
            f"{100 * speed * per_token / peak[r['precision']]:>6.1f}%"
        )
    baseline = BASELINE[method]
    if "tuneforge" not in results or baseline not in results:
        return
    ours, theirs = results["tuneforge"], results[baseline]
    speedup = (ours["tokens"] / ours["seconds"]) / (theirs["tokens"] / theirs["seconds"])
    name = {"trl": "TRL", "trainer": "Trainer"}[baseline]
    accuracy = (
        f", held-out accuracy {ours['held_out_accuracy']:.4f} vs {theirs['held_out_accuracy']:.4f}"
        if method == "classify"
        else ""
    )
    print(
        f"tuneforge / {name}: {speedup:.2f}x real tokens/s ({theirs['seconds'] / ours['seconds']:.2f}x examples/s), "
        f"{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x peak RSS, held-out loss {ours['held_out_loss']:.4f} "
        f"vs {theirs['held_out_loss']:.4f}{accuracy}"
    )


if __name__ == "__main__":
    main()
