"""Decode speed of each way to serve a tuned run, on the same prompts: tuneforge's own path (base + adapter, as
`tuneforge serve` runs it), plain transformers on the merged export, and llama.cpp on the GGUF exports.

    python bench/serving_paths.py runs/contracts            # after tuneforge export ... --to merged / --to gguf
    python bench/serving_paths.py runs/contracts --new-tokens 64 --quants q8_0 q4_k_m

Every path generates exactly N new tokens per prompt (end tokens suppressed or ignored), greedy, after one warm-up
call; printed: generated tokens/s at batch 1 (the prompts one after another) and batch 8 (all at once), and the
process's peak memory. llama-cpp-python decodes one sequence at a time (llama-server's parallel slots batch, but it
is not installed here), so llama.cpp has no batch-8 figure. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

import torch

from tuneforge.cpu.weight_packs import packed_weights
from tuneforge.data.records import chat_prompts
from tuneforge.export.gguf import LlamaCppRuntime
from tuneforge.export.runs import open_run, reference_model
from tuneforge.generation import SamplingParams, generate
from tuneforge.rundir import read_jsonl, split_path


def timed(fn: Any) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - start, tokens


def tuneforge_path(run: Any, prompts: list[Any], n: int) -> dict[str, float]:
    model, tokenizer = reference_model(run)
    model.generation_config.min_new_tokens = n  # exactly n tokens, as the others
    params = SamplingParams(max_new_tokens=n)
    out = {}
    with packed_weights(model):
        generate(model, tokenizer, prompts[:1], params)  # warm-up
        seconds, tokens = timed(
            lambda: sum(generate(model, tokenizer, [p], params)[0].completion_tokens for p in prompts)
        )
        out["batch 1"] = tokens / seconds
        seconds, tokens = timed(lambda: sum(c.completion_tokens for c in generate(model, tokenizer, prompts, params)))
        out["batch 8"] = tokens / seconds
    return out


def transformers_path(folder: Path, prompts: list[Any], n: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def run(batch: list[Any]) -> int:
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            done = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return int((done.shape[1] - inputs["input_ids"].shape[1]) * len(batch))

    run(prompts[:1])
    seconds, tokens = timed(lambda: sum(run([p]) for p in prompts))
    out = {"batch 1": tokens / seconds}
    seconds, tokens = timed(lambda: run(prompts))
    out["batch 8"] = tokens / seconds
    return out


def llama_cpp_path(path: Path, prompts: list[Any], n: int) -> dict[str, float]:
    runtime = LlamaCppRuntime(path)
    llm = runtime.llm

    no_end = {t: -1e9 for t in runtime.stops_at(set(range(llm.n_vocab())))}  # exactly n tokens, as the others

    def run(messages: Any) -> int:
        done: Any = llm.create_completion(
            runtime.prompt_ids(messages), max_tokens=n, temperature=0.0, top_k=1, logit_bias=no_end
        )
        return int(done["usage"]["completion_tokens"])

    run(prompts[0])
    seconds, tokens = timed(lambda: sum(run(p) for p in prompts))
    return {"batch 1": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--quants", nargs="*", default=["f16", "q8_0", "q4_k_m"])
    args = parser.parse_args()
    run = open_run(args.run_dir)
    prompts = chat_prompts(read_jsonl(split_path(run.cfg.run_dir, "test"))[:8])[0]
    export_dir = run.cfg.run_dir / "export"
    rows = {"tuneforge (base + adapter, as served)": tuneforge_path(run, prompts, args.new_tokens)}
    if (export_dir / "merged").is_dir():
        rows["transformers (merged export)"] = transformers_path(export_dir / "merged", prompts, args.new_tokens)
    for quant in args.quants:
        gguf = export_dir / f"gguf-{quant}" / f"model-{quant}.gguf"
        if gguf.is_file():
            rows[f"llama.cpp ({quant} export)"] = llama_cpp_path(gguf, prompts, args.new_tokens)
    print(
        f"{len(prompts)} prompts of {run.cfg.name}, {args.new_tokens} new tokens each, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"{'path':45s} {'batch 1 tok/s':>14s} {'batch 8 tok/s':>14s}")
    for name, figures in rows.items():
        print(f"{name:45s} {figures['batch 1']:14.1f} {figures.get('batch 8', float('nan')):14.1f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (all paths in one process)")


if __name__ == "__main__":
    main()
