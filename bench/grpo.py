"""Reinforcement learning (GRPO) on the embedded model, tuneforge against TRL's GRPOTrainer in the same run.

    python bench/grpo.py                         # 6 timed steps each after 1 warm-up step
    python bench/grpo.py --steps 3 --only tuneforge
    python bench/grpo.py --generations 8 --max-new-tokens 64
    python bench/grpo.py --trl gradient_checkpointing=false   # one TRL setting changed (GRPOConfig field)
    python bench/grpo.py --tiny --steps 2        # smoke test on a tiny random Llama, in seconds

Prompts: the 248 conversations of examples/contracts/*.jsonl (the system instruction and a contract clause) without
their last, assistant answer; that answer is the reference, which the reward ignores. Reward: json_valid
(tuneforge.metrics.text, the same function on both sides): 1.0 if the answer parses as one JSON object, else 0.
Every optimizer step takes --prompts-per-step (4) prompts and samples --generations (4) answers to each, up to
--max-new-tokens (32) tokens, at temperature 1.0, top_k off, top_p 1.0; an answer's advantage is (r - mean) /
(std + 1e-4) within its group; the loss of an answer token is -A x ratio (1: one policy update per sample) + beta
(0.04) x the k3 KL against the starting model (the base with the adapters switched off), averaged over the answer's
tokens, then over the answers (TRL's loss_type "grpo"). LoRA r 16, alpha 32 on all linear layers, learning rate 2e-4
constant (no warm-up), AdamW, clipping at 1.0, seed 0:
  tuneforge  - `tuneforge train` with train.task=grpo, train.method=lora, train.rewards={json_valid: 1.0},
               train.batch_size=prompts per step, nothing held out or validated (its defaults otherwise: precision
               auto, micro_batch_tokens auto, no gradient checkpointing; `--set key=value` changes one);
  TRL        - `GRPOTrainer(model, reward_funcs=json_valid, args=GRPOConfig(...), peft_config=LoraConfig(...))` with
               loss_type="grpo", scale_rewards="group", num_generations, per_device_train_batch_size = prompts x
               generations (TRL counts completions), generation_batch_size the same (one generation per step),
               max_completion_length, beta, temperature, top_k=0, top_p=1.0, use_bias_correction_kl=False
               (tuneforge's KL term is the plain k3), bf16 = tuneforge's resolved precision (TRL's own default is
               bf16=True: accelerate's bf16 autocast around the model's forward), use_cpu on a CPU;
               TRL's defaults otherwise, gradient checkpointing included (`--trl key=value` changes one).
Both divide by the group's sample standard deviation (Bessel-corrected, as TRL does). Not matched: each side shuffles
the prompts its own way, so the steps see different prompts (of similar length). Both sample the answers in fp32
without autocast (TRL's generate bypasses accelerate's autocast wrapper) and run the loss forward under bf16 autocast
where the precision is bf16.

Every variant runs 1 + --steps optimizer steps in its own process (so its peak RSS is its own); the first is the
warm-up, the rest are timed (tuneforge: elapsed_s of runs/<name>/metrics.jsonl; TRL: on_step_end timestamps).
Printed per variant: steps/s and s/step, sampled answer tokens per second (end token included), mean answer length,
peak RSS, the mean reward of the timed steps' answers, the precision, and the ratios tuneforge / TRL.
`pip install -e ".[bench]"` first (TRL is not a tuneforge dependency).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = "smollm2-135m-instruct"
LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
LEARNING_RATE, BETA, TEMPERATURE, SEED = 2e-4, 0.04, 1.0, 0
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_prompts(path: Path) -> int:
    """The chat rows of examples/contracts/*.jsonl (each ends with its reference answer), in one JSONL."""
    files = sorted((ROOT / "examples" / "contracts").glob("*.jsonl"))
    lines = [line for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def tiny_model(folder: Path) -> Path:
    """A saved 2-layer random Llama with a byte-level BPE tokenizer (ChatML, as SmolLM2), as tests/conftest.py's."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [line for f in (ROOT / "examples" / "contracts").glob("*.jsonl") for line in f.read_text().splitlines()]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet)
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def run_tuneforge(args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    from tuneforge.config import load_config
    from tuneforge.data import prepare
    from tuneforge.train import train

    settings = [
        f"model.name={args.model}",
        f"data.path={data}",
        f"output_dir={out}",
        "name=bench",
        "data.val_size=0.0",
        "data.test_size=0.0",
        "data.estimate=false",
        "clean.dedup=false",
        "privacy.mode='off'",
        "train.task=grpo",
        "train.method=lora",
        f"train.lora_r={LORA['r']}",
        f"train.lora_alpha={LORA['lora_alpha']}",
        f"train.target_modules={LORA['target_modules']}",
        "train.rewards={json_valid: 1.0}",
        f"train.num_generations={args.generations}",
        f"train.max_completion_length={args.max_new_tokens}",
        f"train.grpo_beta={BETA}",
        f"train.generation_temperature={TEMPERATURE}",
        f"train.batch_size={args.prompts_per_step}",
        f"train.learning_rate={LEARNING_RATE}",
        "train.lr_scheduler=constant",
        "train.warmup_ratio=0.0",
        f"train.max_steps={args.warmup + args.steps}",
        "train.eval_steps=100000",
        "train.save_steps=100000",
        f"train.seed={SEED}",
    ]
    cfg = load_config(None, [*settings, *args.set])
    prepare(cfg)
    result = train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = rows[args.warmup :]
    seconds = rows[-1]["elapsed_s"] - (rows[args.warmup - 1]["elapsed_s"] if args.warmup else 0.0)
    answers = args.prompts_per_step * args.generations  # per step
    return {
        "seconds": seconds,
        "answer_tokens": sum(r["answer_tokens"] * answers for r in timed),
        "answers": answers * len(timed),
        "reward": sum(r["reward"] for r in timed) / len(timed),
        "precision": result.precision,
    }


def run_trl(args: argparse.Namespace, data: Path, out: Path) -> dict[str, Any]:
    import datasets
    import yaml
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tuneforge.metrics.text import json_valid
    from tuneforge.models import ensure_embedded

    model_dir = str(ensure_embedded()) if args.model == EMBEDDED else args.model  # the embedded model's safetensors
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    rows = [{"prompt": r["messages"][:-1], "reference": r["messages"][-1]["content"]} for r in rows]
    calls: list[tuple[list[float], int]] = []  # per generation (= per step): the rewards and the answer tokens

    def json_valid_reward(completions: list[Any], completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        rewards = [json_valid(c[-1]["content"], ref) for c, ref in zip(completions, kwargs["reference"], strict=True)]
        calls.append((rewards, sum(len(ids) for ids in completion_ids)))
        return rewards

    batch = args.prompts_per_step * args.generations  # TRL counts completions
    settings: dict[str, Any] = {
        "output_dir": str(out / "trl"),
        "per_device_train_batch_size": batch,
        "generation_batch_size": batch,
        "num_generations": args.generations,
        "max_completion_length": args.max_new_tokens,
        "temperature": TEMPERATURE,
        "top_k": 0,
        "top_p": 1.0,
        "beta": BETA,
        "loss_type": "grpo",
        "scale_rewards": "group",
        "use_bias_correction_kl": False,
        "learning_rate": LEARNING_RATE,
        "lr_scheduler_type": "constant",
        "max_steps": args.warmup + args.steps,
        "bf16": args.precision == "bf16",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": SEED,
        "use_cpu": args.device == "cpu",
    }
    for item in args.trl:
        key, value = item.split("=", 1)
        settings[key] = yaml.safe_load(value)
    config = GRPOConfig(**settings)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=json_valid_reward,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM"),
    )
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter())

    trainer.add_callback(Clock())
    start = time.perf_counter()
    trainer.train()
    stamps = [start, *times]
    timed = calls[args.warmup :]
    return {
        "seconds": stamps[-1] - stamps[args.warmup],
        "answer_tokens": sum(tokens for _, tokens in timed),
        "answers": sum(len(rewards) for rewards, _ in timed),
        "reward": sum(sum(rewards) for rewards, _ in timed) / max(1, sum(len(rewards) for rewards, _ in timed)),
        "precision": "bf16" if config.bf16 else "fp32",
        "gradient_checkpointing": bool(config.gradient_checkpointing),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--prompts-per-step", type=int, default=4, help="prompts per optimizer step")
    parser.add_argument("--generations", type=int, default=4, help="answers sampled per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="the longest answer sampled, in tokens")
    parser.add_argument("--only", choices=["tuneforge", "trl"], help="run one side only")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of the embedded model")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a tuneforge config override (repeatable)"
    )
    parser.add_argument(
        "--trl", action="append", default=[], metavar="KEY=VALUE", help="a GRPOConfig setting for TRL (repeatable)"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=EMBEDDED, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.variant:
        work = Path(args.workdir)
        runner = {"tuneforge": run_tuneforge, "trl": run_trl}[args.variant]
        result = runner(args, work / "prompts.jsonl", work / args.variant)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    from tuneforge.models import pick_device
    from tuneforge.train.precision import resolve_precision

    device = pick_device()
    choice = next((o.split("=", 1)[1] for o in args.set if o.startswith("train.precision=")), "auto")
    precision = resolve_precision(choice, device)
    with tempfile.TemporaryDirectory(prefix="tf-bench-grpo-") as tmp:
        work = Path(tmp)
        n_prompts = write_prompts(work / "prompts.jsonl")
        model = str(tiny_model(work / "tiny-llama")) if args.tiny else EMBEDDED
        print(
            f"GRPO on {'a tiny random Llama' if args.tiny else EMBEDDED} ({device}), {n_prompts} contract prompts: "
            f"{args.steps} timed steps after {args.warmup} warm-up, {args.prompts_per_step} prompts x "
            f"{args.generations} answers of up to {args.max_new_tokens} tokens per step, beta {BETA}, reward "
            f"json_valid\nprecision: tuneforge train.precision={choice} resolves to {precision} here; TRL gets "
            f"bf16={precision == 'bf16'} (its own default: bf16=True)"
        )
        results = {}
        for tool in [args.only] if args.only else ["tuneforge", "trl"]:
            cmd = [sys.executable, __file__, "--variant", tool, "--workdir", tmp, "--model", model]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--prompts-per-step", str(args.prompts_per_step), "--generations", str(args.generations)]
            cmd += ["--max-new-tokens", str(args.max_new_tokens), "--precision", precision, "--device", device]
            cmd += [f"--set={o}" for o in args.set] + [f"--trl={o}" for o in args.trl]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{tool} failed:\n{done.stderr[-3000:]}")
            results[tool] = json.loads(done.stdout.strip().splitlines()[-1])
        report(results, args.steps)


def report(results: dict[str, dict[str, Any]], steps: int) -> None:
    print(
        f"\n{'':<11}{'steps/s':>9}{'s/step':>8}{'answer tok/s':>14}{'tok/answer':>12}{'peak RSS MiB':>14}"
        f"{'mean reward':>13}{'precision':>11}"
    )
    for tool, r in results.items():
        speed = r["answer_tokens"] / r["seconds"]
        print(
            f"{tool:<11}{steps / r['seconds']:>9.3f}{r['seconds'] / steps:>8.2f}{speed:>14.1f}"
            f"{r['answer_tokens'] / r['answers']:>12.1f}{r['peak_rss_mib']:>14.0f}{r['reward']:>13.3f}"
            f"{r['precision']:>11}"
        )
    if "trl" in results:
        print(f"TRL gradient checkpointing: {'on' if results['trl']['gradient_checkpointing'] else 'off'}")
    if len(results) == 2:
        ours, theirs = results["tuneforge"], results["trl"]
        print(
            f"tuneforge / TRL: {theirs['seconds'] / ours['seconds']:.2f}x steps/s, "
            f"{(ours['answer_tokens'] / ours['seconds']) / (theirs['answer_tokens'] / theirs['seconds']):.2f}x "
            f"answer tokens/s, {ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x peak RSS"
        )


if __name__ == "__main__":
    main()
