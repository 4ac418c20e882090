"""Generation speed of tuneforge's serving path against plain `model.generate`, same prompts, same lengths.

    python bench/generate.py                  # embedded model, batch 1 and 8, 64 new tokens, 3 repeats
    python bench/generate.py --new-tokens 128 --repeats 1

tuneforge's path is `tuneforge.generation.generate` (what evaluation, chat and the server call: chat template,
left-padded batch, greedy; on CPU the decode steps multiply by the GGUF blocks the embedded model was loaded from, see
tuneforge/cpu/gguf_blocks.py, or by MKL-packed fp32 weights, see tuneforge/cpu/weight_packs.py). It runs twice: each
call finding the blocks (or packing the weights) anew ("tuneforge", what a lone `generate` call pays), and with those of
one `packed_weights` block shared by all calls ("shared packs", what evaluation and the server do). The baseline is what
the transformers docs teach: `apply_chat_template`, a left-padded tokenizer call and `model.generate(**inputs,
max_new_tokens=N, do_sample=False)`. Both must produce N tokens per prompt (`min_new_tokens` on the baseline; EOS is
suppressed for tuneforge's run by the same setting through `generation_config`), so tokens/s compares equal work.
Printed: generated tokens/s per batch size after one warm-up call of each case, and the ratio. The cases take turns
within each repeat, so a slow or fast spell of a shared machine falls on all three alike.

The "mixed" row runs batches of 8, 5, 3, 8, 6, 2, 8 and 4 prompts in turn, as a server's batches come (their size is
however many requests arrived together): with shared packs, one set serves every batch size.

The last row serves a LoRA adapter (r=16, all linear layers, untrained: the same cost per token as a trained one)
unmerged, as a server does and as the PEFT docs load one for inference (`PeftModel` + `generate`): the baseline runs
peft's forward (two extra products per adapted layer); tuneforge runs the adapters beside the blocks as one pair of
plain products per layer (fp32 packs fold the adapter into each layer's weight).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

QUESTIONS = [
    "Wie lange ist die Kündigungsfrist in meinem Vertrag?",
    "What is the capital of France, and why is it famous?",
    "Erkläre kurz, was ein Mietvertrag ist.",
    "Give me three tips for writing a good product review.",
    "Was ist der Unterschied zwischen brutto und netto?",
    "How do I return a parcel that arrived damaged?",
    "Nenne drei Vorteile von Solarenergie.",
    "Summarise the plot of Romeo and Juliet in two sentences.",
]


MIXED = (8, 5, 3, 8, 6, 2, 8, 4)


def plain(model: Any, tokenizer: Any, chats: list[Any], new_tokens: int) -> int:
    """The transformers docs' way; returns the tokens generated."""
    import torch

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return int(out[:, inputs["input_ids"].shape[1] :].numel())


def ours(model: Any, tokenizer: Any, chats: list[Any], new_tokens: int) -> int:
    from tuneforge.generation import SamplingParams, generate

    model.generation_config.min_new_tokens = new_tokens  # the same work as the baseline: no early EOS
    done = generate(model, tokenizer, chats, SamplingParams(max_new_tokens=new_tokens))
    model.generation_config.min_new_tokens = None
    return sum(c.completion_tokens for c in done)


def main() -> None:
    from tuneforge.cpu.weight_packs import packed_weights
    from tuneforge.models import load_model, load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model.name (default: embedded)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case, after one warm-up")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model).eval(), load_tokenizer(args.model)
    print(f"generation, {args.model}, {args.new_tokens} new tokens per prompt, greedy")
    header = f"{'batch':>6}{'plain generate tok/s':>22}{'tuneforge tok/s':>17}{'ratio':>7}"
    print(f"{header}{'shared packs':>14}{'ratio':>7}")
    for sizes, label in (((1,), "1"), ((8,), "8"), (MIXED, "mixed"), ((8,), "8+LoRA")):
        if label == "8+LoRA":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")).eval()
        batches = [[[{"role": "user", "content": q}] for q in (QUESTIONS * 2)[i : i + n]] for i, n in enumerate(sizes)]
        seconds = dict.fromkeys(("plain", "tuneforge", "shared"), 0.0)
        tokens = dict.fromkeys(seconds, 0)
        with packed_weights(model) as packs:

            def fresh(model: Any, tokenizer: Any, chats: list[Any], new_tokens: int) -> int:
                for made in (packs.packed, packs.shared, packs.kept):
                    made.clear()  # this call packs anew
                return ours(model, tokenizer, chats, new_tokens)

            cases = {"plain": plain, "tuneforge": fresh, "shared": ours}
            for fn in cases.values():
                fn(model, tokenizer, batches[0], args.new_tokens)  # warm-up (the shared packs are made here)
            for _ in range(args.repeats):
                for name, fn in cases.items():
                    start = time.perf_counter()
                    tokens[name] += sum(fn(model, tokenizer, chats, args.new_tokens) for chats in batches)
                    seconds[name] += time.perf_counter() - start
        speed = {name: tokens[name] / seconds[name] for name in seconds}
        ratios = [speed[name] / speed["plain"] for name in ("tuneforge", "shared")]
        print(
            f"{label:>6}{speed['plain']:>22.1f}{speed['tuneforge']:>17.1f}{ratios[0]:>6.2f}x"
            f"{speed['shared']:>14.1f}{ratios[1]:>6.2f}x"
        )


if __name__ == "__main__":
    main()
