"""Which precision training takes, and the bf16 CPU path: it computes what plain bf16 autocast computes."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from tuneforge.data import prepare
from tuneforge.data.tokenize import encode_chat
from tuneforge.models import load_model, load_tokenizer
from tuneforge.train import precision, train
from tuneforge.train.lm import collate, loss_sum
from tuneforge.train.precision import (
    ATTENTION,
    CpuBf16,
    bf16_copy_bytes,
    cpu_bf16,
    precision_note,
    resolve_precision,
)


@pytest.mark.parametrize(("gain", "chosen"), [(2.4, "bf16"), (0.6, "fp32")])
def test_auto_precision_on_a_cpu_follows_the_measured_bf16_gain(monkeypatch, gain: float, chosen: str) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_gain", lambda: gain)
    assert resolve_precision("auto", "cpu") == chosen
    note = precision_note("auto", "cpu", chosen)
    assert f"measured {gain:.1f}x as fast as fp32" in note
    assert ("fast path" if chosen == "bf16" else "fallback") in note
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16" and "AMX tiles" in precision_note("auto", "cpu", "bf16")
    assert resolve_precision("fp32", "cpu") == "fp32"


def test_the_bf16_gain_is_measured_once_and_leaves_seeded_draws_alone() -> None:
    first = precision.cpu_bf16_gain()
    assert 0.01 < first < 100 and precision.cpu_bf16_gain() is first  # cached for the process
    state = torch.get_rng_state()  # a seeded run draws the same whether or not the measurement ran before
    precision.cpu_bf16_gain.__wrapped__()
    assert torch.equal(torch.get_rng_state(), state)


def _lora_model_and_batch(model_dir: Path) -> tuple[torch.nn.Module, object]:
    tokenizer = load_tokenizer(str(model_dir))
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(load_model(str(model_dir)), config)
    examples = [
        encode_chat(tokenizer, [{"role": "user", "content": "colour? " * i}, {"role": "assistant", "content": "red"}])
        for i in range(1, 4)
    ]
    return model, collate(examples, int(tokenizer.pad_token_id))  # rows of unequal length: padding masked


def _loss_and_grads(model: torch.nn.Module, batch: object) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_sum(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_frozen_weights_held_in_bf16_give_autocasts_loss_and_gradients_bit_for_bit(tiny_model_dir: Path) -> None:
    model, batch = _lora_model_and_batch(tiny_model_dir)
    plain = _loss_and_grads(model, batch)
    before = {n: p for n, p in model.named_parameters()}
    fast = CpuBf16(model, frozen=True, attention=False)
    assert len(fast.swaps) == 2 * 7 + 1  # 7 Linears per layer of the 2-layer model, and the output layer
    # what the memory estimate adds for them, and only where the training loop makes them
    held = sum(2 * w.numel() for _, w, _ in fast.swaps)
    assert bf16_copy_bytes(model, "cpu", "bf16", "lora") == fast.copy_bytes == held > 0
    assert bf16_copy_bytes(model, "cuda", "bf16", "lora") == bf16_copy_bytes(model, "cpu", "bf16", "full") == 0
    assert bf16_copy_bytes(model, "cpu", "bf16", "lora", processes=2) == 0
    with fast:
        head = model.get_base_model().lm_head.weight
        assert head.dtype == torch.bfloat16 and not head.requires_grad
        held = _loss_and_grads(model, batch)
    assert held[0] == plain[0]
    assert all(torch.equal(held[1][n], plain[1][n]) for n in plain[1])
    after = dict(model.named_parameters())
    assert all(after[n] is before[n] for n in before)  # the fp32 weights themselves are back, not copies
    assert model.get_base_model().lm_head.weight is model.get_base_model().model.embed_tokens.weight  # tied again


def test_the_training_path_fuses_the_lora_linears_while_entered_and_stays_near_fp32(tiny_model_dir: Path) -> None:
    model, batch = _lora_model_and_batch(tiny_model_dir)
    model.zero_grad()
    reference = loss_sum(model, batch)  # fp32
    reference.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    fast = cpu_bf16(model, "cpu", "bf16", "lora")
    lora = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert len(fast.fused) == len(lora) == 2 * 7  # every adapted Linear of the 2-layer model
    with fast:
        assert all("forward" in vars(m) for m in lora)
        loss, grads = _loss_and_grads(model, batch)
    assert not any("forward" in vars(m) for m in lora)  # PEFT's own forward again
    assert loss == pytest.approx(reference.item(), rel=1e-2)
    assert all(F.cosine_similarity(grads[n].flatten(), want[n].flatten(), dim=0) > 0.99 for n in want)
    assert cpu_bf16(model, "cpu", "bf16", "lora", processes=2).fused == []  # weights an engine synchronises: as is


def test_compiled_decoder_layers_compute_what_the_eager_ones_do_and_only_while_entered(tiny_model_dir: Path) -> None:
    model, batch = _lora_model_and_batch(tiny_model_dir)
    eager = cpu_bf16(model, "cpu", "bf16", "lora")
    with eager:
        want = _loss_and_grads(model, batch)
    fast = cpu_bf16(model, "cpu", "bf16", "lora", compile=True)
    layers = model.get_base_model().model.layers
    assert [layer for layer, _ in fast.compiled] == list(layers)
    with fast:
        assert all("forward" in vars(layer) for layer in layers)
        got = _loss_and_grads(model, batch)
        with fast.paused():  # generation: the eager layers
            assert not any("forward" in vars(layer) for layer in layers)
    assert not any("forward" in vars(layer) for layer in layers)
    assert got[0] == pytest.approx(want[0], rel=1e-3)
    assert all(F.cosine_similarity(got[1][n].flatten(), want[1][n].flatten(), dim=0) > 0.99 for n in want[1])
    assert cpu_bf16(model, "cpu", "bf16", "lora").compiled == []  # only when asked for
    assert cpu_bf16(model, "cpu", "fp32", "lora", compile=True).compiled == []  # only on the bf16 LoRA path


def test_attention_runs_in_fp32_under_bf16_autocast_and_only_while_entered(tiny_model_dir: Path, monkeypatch) -> None:
    model, batch = _lora_model_and_batch(tiny_model_dir)
    seen: list[torch.dtype] = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        out = sdpa(*args, **kwargs)
        seen.append(out.dtype)  # the dtype it computed in (autocast casts its inputs below this call)
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    fast = CpuBf16(model, frozen=True, attention=True)
    plain_fp32 = loss_sum(model, batch).item()
    seen.clear()
    _loss_and_grads(model, batch)
    assert seen and set(seen) == {torch.bfloat16}  # plain autocast: bf16 attention
    seen.clear()
    with fast:
        assert model.get_base_model().config._attn_implementation == ATTENTION
        _loss_and_grads(model, batch)
        assert seen and set(seen) == {torch.float32}
        with fast.paused():  # as it was: fp32 weights, the model's own attention; outside autocast, plain fp32
            assert model.get_base_model().config._attn_implementation == "sdpa"
            assert loss_sum(model, batch).item() == plain_fp32
    assert model.get_base_model().config._attn_implementation == "sdpa"


def test_bf16_lora_training_on_cpu_generates_answers_at_validation_and_saves_fp32(tiny_config) -> None:
    """The whole loop on the bf16 CPU path: validation generation (fp32, outside autocast) mid-run, and the adapter
    saved as the fp32 model it trained."""
    cfg = tiny_config("train.precision=bf16", "train.epochs=2", "train.eval_generate=2", "evaluate.metrics=[token_f1]")
    prepare(cfg)
    lines: list[str] = []
    result = train(cfg, log=lines.append)
    assert result.precision == "bf16"
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if "val_token_f1" in r], rows
    from safetensors.torch import load_file

    saved = load_file(result.model_dir / "adapter_model.safetensors")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
