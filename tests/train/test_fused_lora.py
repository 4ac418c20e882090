"""The fused LoRA Linear of the CPU bf16 path: PEFT's numbers in one bf16 product, without autocast's rounding loss."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model

from tuneforge.train.fused_lora import FusedLora, fusable

BF16 = torch.bfloat16


class _Block(torch.nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 96, bias=bias)


def _lora_linear(bias: bool = False, **config: object) -> torch.nn.Module:
    torch.manual_seed(0)
    block = _Block(bias)
    for p in block.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], init_lora_weights=False, **config)  # type: ignore[arg-type]
    return inject_adapter_in_model(lora, block).proj


def _fused(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    fused = FusedLora(layer)
    fused.on(True)
    try:
        with torch.autocast("cpu", dtype=BF16):
            return layer(x)
    finally:
        fused.on(False)


def test_only_plain_lora_linears_on_frozen_fp32_weights_are_fused() -> None:
    assert fusable(_lora_linear()) and fusable(_lora_linear(bias=True))
    assert not fusable(_lora_linear(lora_dropout=0.1))  # dropout: PEFT's path
    assert not fusable(_lora_linear(use_dora=True))
    assert not fusable(torch.nn.Linear(4, 4))


@pytest.mark.parametrize("bias", [False, True])
def test_fused_lora_gives_pefts_output_and_gradients_within_bf16_rounding(bias: bool) -> None:
    layer = _lora_linear(bias)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = torch.randn(3, 50, 64, requires_grad=True)
    grad = torch.randn(3, 50, 96)

    def run(forward) -> list[torch.Tensor]:
        for t in (x, a, b):
            t.grad = None
        out = forward()
        out.float().backward(grad)
        return [out.float().detach(), x.grad.clone(), a.grad.clone(), b.grad.clone()]

    reference = run(lambda: layer(x))  # PEFT in fp32
    fused = run(lambda: _fused(layer, x))
    assert fused[0].dtype == torch.float32 and _fused(layer, x).dtype == BF16  # bf16 out, as autocast's would be
    for got, want in zip(fused, reference, strict=True):
        assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.9999
        assert torch.allclose(got, want, rtol=0.02, atol=0.02 * want.abs().max().item())
    assert "forward" not in vars(layer)  # PEFT's forward again after `on(False)`
    with torch.no_grad():  # evaluation under autocast: no graph
        assert torch.allclose(_fused(layer, x).float(), reference[0], rtol=0.02, atol=0.05)


def test_fused_lora_keeps_a_small_adapter_term_that_autocast_rounds_away() -> None:
    """The LoRA term below half a bf16 step of the base output: PEFT under autocast adds it to the already rounded
    base output and loses it; the fused product rounds base + term once."""
    layer = _lora_linear()
    with torch.no_grad():
        layer.lora_A["default"].weight.fill_(1 / 64)
        layer.lora_B["default"].weight.fill_(4e-5)  # every term +0.00016 on outputs of ~0.3 (bf16 step ~0.002)
    x = torch.rand(256, 64)
    with torch.no_grad():
        reference = layer(x)
        term = reference - layer.base_layer(x)
        with torch.autocast("cpu", dtype=BF16):
            peft = layer(x).float()
        fused = _fused(layer, x).float()
    assert term.min() > 0
    lost = {name: float((reference - out).sum() / term.sum()) for name, out in [("peft", peft), ("fused", fused)]}
    assert lost["peft"] > 0.5 and abs(lost["fused"]) < 0.05, lost


def test_the_fused_product_follows_b_as_the_optimizer_changes_it() -> None:
    layer = _lora_linear()
    x = torch.randn(8, 64)
    fused = FusedLora(layer)
    fused.on(True)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        before = layer(x)
        layer.lora_B["default"].weight.mul_(3.0)
        after = layer(x)
    fused.on(False)
    with torch.no_grad():
        reference = layer(x)
    assert not torch.equal(before, after)
    assert torch.allclose(after.float(), reference, rtol=0.02, atol=0.01 * reference.abs().max().item())
