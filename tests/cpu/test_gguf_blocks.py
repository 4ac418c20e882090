"""Decode steps from GGUF blocks (tuneforge/cpu/gguf_blocks.py): weights found exactly, products as F.linear's."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf.quants import GGMLQuantizationType, dequantize, quantize
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from tuneforge.cpu import gguf_blocks, weight_packs
from tuneforge.cpu.weight_packs import packed_weights
from tuneforge.generation import SamplingParams, generate
from tuneforge.models import load_model, load_tokenizer

needs_kernel = pytest.mark.skipif(gguf_blocks.kernels() is None, reason="the GGUF-block kernel cannot be built here")
FORMATS = {"Q4_1": GGMLQuantizationType.Q4_1, "Q8_0": GGMLQuantizationType.Q8_0}


def gguf_weight(shape: tuple[int, int], fmt: str, seed: int = 0) -> torch.Tensor:
    """A weight as transformers' GGUF loader gives it: quantised by llama.cpp's rules (gguf-py), then dequantised."""
    data = np.random.default_rng(seed).normal(0, 0.05, shape).astype(np.float32)
    return torch.from_numpy(dequantize(quantize(data, FORMATS[fmt]), FORMATS[fmt]).reshape(shape).copy())


def to_gguf_weights(model: torch.nn.Module, fmt: str) -> None:
    """Every Linear weight of the model replaced by its GGUF round trip, as if the model was loaded from a GGUF."""
    with torch.no_grad():
        for i, module in enumerate(m for m in model.modules() if isinstance(m, torch.nn.Linear)):
            module.weight.copy_(gguf_weight(tuple(module.weight.shape), fmt, seed=i))


def test_the_kernel_is_built_where_ci_requires_it() -> None:
    """.ci/run sets TUNEFORGE_REQUIRE_KERNEL: there the tests below must run, not skip."""
    if os.environ.get("TUNEFORGE_REQUIRE_KERNEL"):
        assert gguf_blocks.kernels() is not None, "the GGUF-block kernel did not build (see the logged reason)"


@needs_kernel
@pytest.mark.parametrize("fmt", ["Q4_1", "Q8_0"])
def test_blocks_are_found_exactly_and_multiply_as_f_linear_does(fmt: str) -> None:
    torch.manual_seed(0)
    for out_features, in_features in ((96, 64), (7, 160), (301, 32)):  # odd output counts take the kernel's tail
        weight, bias = gguf_weight((out_features, in_features), fmt), torch.randn(out_features)
        blocks = gguf_blocks.exact_blocks(weight)
        assert blocks is not None and blocks.format == fmt
        assert blocks.nbytes < weight.numel() * 4 * (0.2 if fmt == "Q4_1" else 0.3)
        # one-hot rows pick single weights: the kernel rebuilds each weight bit for bit
        assert torch.equal(blocks.linear(torch.eye(in_features)), weight.T)
        for rows in (1, 2, 3, 5, 8, 11, 17):  # every path of the kernel: 8, 4, 2 and 1 rows at a time
            x = torch.randn(rows, 1, in_features)
            torch.testing.assert_close(blocks.linear(x, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_only_exact_blocks_are_taken() -> None:
    weight = gguf_weight((64, 96), "Q4_1")
    nudged = weight.clone()
    nudged[40, 7] = torch.nextafter(nudged[40, 7], torch.tensor(1.0))  # one weight one ulp off: not Q4_1 any more
    assert gguf_blocks.exact_blocks(nudged) is None
    assert gguf_blocks.exact_blocks(torch.randn(64, 96)) is None  # an fp32 checkpoint's weights
    assert gguf_blocks.exact_blocks(weight.bfloat16()) is None and gguf_blocks.exact_blocks(weight[:, :80]) is None
    q8 = gguf_blocks.exact_blocks(gguf_weight((64, 96), "Q8_0"))
    assert q8 is not None and q8.format == "Q8_0"  # more than 16 levels a block: Q8_0, not Q4_1


@needs_kernel
@pytest.mark.parametrize("fmt", ["Q4_1", "Q8_0"])
def test_generation_from_blocks_gives_the_same_answers(
    tiny_model_dir: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    to_gguf_weights(model, fmt)
    conversations = [[{"role": "user", "content": f"Item {i}: what colour?"}] for i in (1, 22, 3)]
    params = SamplingParams(max_new_tokens=12)
    with monkeypatch.context() as patch, packed_weights(model) as packs:
        patch.setattr(weight_packs, "_packs_pay", lambda: pytest.fail("measured fp32 packs with no weight needing one"))
        fast = generate(model, tokenizer, conversations, params)
        one = generate(model, tokenizer, conversations[:1], params)  # a single row: blocks too
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert all(packs.blocks[m] is not None for m in linears) and not packs.shared  # no fp32 copies made
    with pytest.MonkeyPatch.context() as patch:  # the reference: transformers' own forward on the fp32 weights
        patch.setattr(weight_packs, "available", lambda model: False)
        plain = generate(model, tokenizer, conversations, params)
    assert [c.text for c in fast] == [c.text for c in plain] and one[0].text == plain[0].text


@needs_kernel
def test_an_adapter_runs_beside_the_base_layers_blocks(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir)).eval()
    to_gguf_weights(model, "Q4_1")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(model, config).eval()
    model.add_adapter("other", LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj"], init_lora_weights=False))
    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    step = torch.randn(3, 1, layer.base_layer.in_features)
    with torch.no_grad(), packed_weights(model) as packs:
        for active in (["default"], ["default", "other"], ["other"]):
            model.base_model.set_adapter(active)
            reference = layer(step)  # peft's forward: base layer plus each active adapter's scale * B @ A
            with packs.decode_rows(3):
                fast = layer(step)
                assert packs.blocks[layer.base_layer] is not None and layer not in packs.packed  # no fp32 copy
            torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(fast, packs.blocks[layer.base_layer].linear(step), atol=1e-3)  # adapters count


@needs_kernel
def test_without_the_kernel_generation_keeps_the_fp32_path(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, tokenizer = load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))
    to_gguf_weights(model, "Q8_0")
    conversations = [[{"role": "user", "content": "Item 1"}], [{"role": "user", "content": "Item 22"}]]
    params = SamplingParams(max_new_tokens=8)
    expected = [c.text for c in generate(model, tokenizer, conversations, params)]
    monkeypatch.setattr(gguf_blocks, "kernels", lambda: None)
    with packed_weights(model) as packs:
        assert [c.text for c in generate(model, tokenizer, conversations, params)] == expected
        assert not any(packs.blocks.values())
    monkeypatch.undo()
    gguf_blocks.kernels.cache_clear()  # a machine that cannot build it: the reason is logged, nothing fails
    monkeypatch.setattr(gguf_blocks.platform, "machine", lambda: "aarch64")
    with caplog.at_level(logging.INFO, logger="tuneforge.cpu.gguf_blocks"):
        assert gguf_blocks.kernels() is None
    assert "x86-64 only" in caplog.text
    monkeypatch.undo()
    gguf_blocks.kernels.cache_clear()
    assert gguf_blocks.kernels() is not None  # built before: loaded from the cache


@needs_kernel
def test_a_lora_bias_keeps_peft_s_own_forward(tiny_model_dir: Path) -> None:
    """An adapter whose B has a bias (lora_bias) is more than scale * B @ A: not folded, not run beside the blocks."""
    model = load_model(str(tiny_model_dir)).eval()
    to_gguf_weights(model, "Q4_1")
    config = LoraConfig(r=4, target_modules=["q_proj"], lora_bias=True, init_lora_weights=False)
    model = get_peft_model(model, config).eval()
    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    with torch.no_grad():
        torch.nn.init.normal_(layer.lora_B["default"].bias)
        step = torch.randn(3, 1, layer.base_layer.in_features)
        reference = layer(step)
        with packed_weights(model) as packs, packs.decode_rows(3):
            fast = layer(step)
            assert not weight_packs._foldable(layer) and layer not in packs.low_rank
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
