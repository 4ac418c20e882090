"""Which precision training runs in, and what makes bf16 autocast fast on a CPU.

`train.precision=auto` takes bf16 autocast where the hardware multiplies bf16 faster than fp32: GPUs with bf16,
CPUs with AMX tiles, and CPUs whose bf16 matmuls a one-off measurement finds at least BF16_GAIN x as fast (an AMD
EPYC Zen 4 with AVX512-BF16: 2.1-2.7x; an Intel Xeon with AVX512-BF16 but no AMX: 0.6x, so it keeps fp32).

On a CPU more things decide whether bf16 training pays, measured on bench/train.py's LoRA run (AMD EPYC, AMX Xeon):
- autocast casts every frozen weight to bf16 again at every micro-batch (it caches only weights that train): with
  LoRA that is the whole base model, a third of a GB written per micro-batch. `CpuBf16` holds the frozen Linear
  weights in bf16 for the run instead: the same numbers autocast would make, cast once.
- PyTorch's CPU flash attention is slower in bf16 than in fp32 (forward and backward of the model's shapes: 7-15 ms
  against 3-12 ms; on the AMX Xeon too below ~250 tokens a row), so `CpuBf16` runs attention in fp32 (`ATTENTION`:
  transformers' SDPA on fp32 copies of q, k, v).
- PEFT's LoRA Linear under autocast rounds away small adapter terms and costs three products and two passes over
  its output; `CpuBf16` computes each as one bf16 product instead (fused_lora.py).
- What is left besides the products costs the same in bf16 as in fp32 (bench/profile_step.py, AMX Xeon, one
  thread: elementwise ops 1.0 s, attention 0.7 s, per-op overhead 0.7 s of a 4.6 s bf16 step); `train.compile`
  takes the per-op overhead and the casts away (1.2-1.3x the bf16 tokens/s) after a one-off compile.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.cpu.timing import median_seconds
from tuneforge.errors import ConfigError
from tuneforge.train.fused_lora import FusedLora, fusable

BF16_GAIN = 1.5  # bf16 matmuls at least this much faster than fp32 ones: bf16 autocast on a CPU without AMX
ATTENTION = "tuneforge_sdpa_fp32"  # the attention implementation CpuBf16 sets (registered with transformers)


def resolve_precision(choice: str, device: str) -> str:
    """'bf16' or 'fp32': what `train.precision` means on this hardware."""
    if choice != "auto":
        return choice
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if torch.cpu._is_amx_tile_supported():
        return "bf16"
    return "bf16" if cpu_bf16_gain() >= BF16_GAIN else "fp32"


def precision_note(choice: str, device: str, precision: str) -> str:
    """The log line that says which precision path training takes, and why."""
    if choice != "auto":
        return f"precision {precision} on {device}: as train.precision asks"
    if device == "cuda":
        why = "the GPU supports bf16" if precision == "bf16" else "the GPU lacks bf16"
    elif torch.cpu._is_amx_tile_supported():
        why = "this CPU has AMX tiles"
    else:
        gain = cpu_bf16_gain()
        why = (
            f"this CPU has no AMX tiles and its bf16 matmuls measured {gain:.1f}x as fast as fp32 ones "
            f"({'at least' if precision == 'bf16' else 'below'} {BF16_GAIN}x; train.precision=fp32 or bf16 chooses)"
        )
    path = "bf16 autocast, the fast path" if precision == "bf16" else "fp32, the fallback"
    return f"precision {precision} on {device}: {path}, as {why}"


@functools.cache
def cpu_bf16_gain() -> float:
    """How many times faster this CPU multiplies in bf16 than in fp32, measured once per process (~0.2 s) on a
    training-shaped product (512 tokens x 576 -> 1536) with torch's threads, in alternating rounds."""
    rng = torch.Generator().manual_seed(0)  # its own: a seeded run's draws must not depend on whether this ran
    x, w = torch.randn(512, 576, generator=rng), torch.randn(1536, 576, generator=rng)
    x16, w16 = x.bfloat16(), w.bfloat16()
    fp32, bf16 = median_seconds(
        lambda: [F.linear(x, w) for _ in range(4)], lambda: [F.linear(x16, w16) for _ in range(4)]
    )
    return fp32 / bf16


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when `precision` is bf16, else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_bf16(
    model: Any, device: str, precision: str, method: str, processes: int = 1, compile: bool = False
) -> CpuBf16:
    """What a training run takes on top of autocast: on the bf16 CPU path attention in fp32, and with LoRA in one
    process the frozen weights in bf16 and the LoRA Linears fused (a swapped weight would confuse an engine that
    synchronises weights), their decoder layers compiled if `compile` (`train.compile`) and a compiler is here."""
    frozen = _holds_frozen(device, precision, method, processes)
    return CpuBf16(model, frozen, device == "cpu" and precision == "bf16", fuse=frozen, compile=frozen and compile)


def bf16_copy_bytes(model: Any, device: str, precision: str, method: str, processes: int = 1) -> int:
    """The memory `cpu_bf16`'s bf16 copies of the frozen weights will take (0 where it makes none), before it makes
    them (`CpuBf16.copy_bytes` once made)."""
    if not _holds_frozen(device, precision, method, processes):
        return 0
    return sum(2 * module.weight.numel() for module in _frozen_linears(model))


def _holds_frozen(device: str, precision: str, method: str, processes: int) -> bool:
    return device == "cpu" and precision == "bf16" and method == "lora" and processes == 1


def _bf16(weight: torch.Tensor, joint: dict[int, torch.Tensor]) -> torch.Tensor:
    """The bf16 copy of a frozen weight: a fused LoRA Linear's is the frozen part of its joint matrix."""
    held = joint.get(id(weight))
    return held if held is not None else weight.detach().bfloat16()


def _frozen_linears(model: Any) -> list[torch.nn.Linear]:
    return [
        module
        for module in model.modules()
        if type(module) is torch.nn.Linear and not module.weight.requires_grad and module.weight.dtype == torch.float32
    ]


def _compiled_layers(model: Any) -> list[tuple[torch.nn.Module, Any]]:
    """Each decoder layer of `model` and its forward through one shared `torch.compile` (dynamic shapes: one graph
    serves every layer and micro-batch shape); none without a C++ compiler for Inductor, under gradient checkpointing
    or where the layers are not found."""
    from tuneforge.models import decoder_layers

    checkpointing = any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
    if checkpointing or shutil.which(os.environ.get("CXX") or "g++") is None:
        return []
    try:
        layers = list(decoder_layers(model))
    except ConfigError:
        return []
    compiled = {kind: torch.compile(kind.forward, dynamic=True) for kind in {type(layer) for layer in layers}}
    return [(layer, functools.partial(compiled[type(layer)], layer)) for layer in layers]


class CpuBf16:
    """While entered: `model`'s frozen fp32 Linear weights are held in bf16 (if `frozen`), its LoRA Linears run as
    one bf16 product each (if `fuse`, see fused_lora.py), its decoder layers run compiled (if `compile` and they
    can be, see `_compiled_layers`) and its SDPA attention runs in fp32 (if `attention`). For bf16 autocast training
    on a CPU (with none, it changes nothing); `paused()` gives the model back as it was (for generation, which runs
    outside autocast).

    The bf16 copies hold exactly what autocast's cast of each weight gives, so without `fuse` the run computes the
    same numbers (tested); they take half the frozen weights' memory more, while the fp32 weights wait for the exit.
    A fused LoRA Linear's copy is the frozen part of its joint matrix [W | B].
    """

    def __init__(self, model: Any, frozen: bool, attention: bool, fuse: bool = False, compile: bool = False) -> None:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.compiled = _compiled_layers(inner) if compile else []
        sdpa = getattr(getattr(inner, "config", None), "_attn_implementation", None) == "sdpa"
        self.inner = inner if attention and sdpa else None
        self.fused = [FusedLora(module) for module in model.modules() if frozen and fuse and fusable(module)]
        joint = {id(f.module.base_layer.weight): f.weight for f in self.fused}
        self.swaps = [
            (module, module.weight, torch.nn.Parameter(_bf16(module.weight, joint), requires_grad=False))
            for module in (_frozen_linears(model) if frozen else [])
        ]

    @property
    def copy_bytes(self) -> int:
        """The memory its bf16 copies take."""
        return sum(2 * half.numel() for _, _, half in self.swaps)

    def __enter__(self) -> CpuBf16:
        self._set(True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._set(False)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The model with its fp32 weights and its own attention for the duration."""
        self._set(False)
        try:
            yield
        finally:
            self._set(True)

    def _set(self, on: bool) -> None:
        for module, fp32, bf16 in self.swaps:
            module.weight = bf16 if on else fp32
        for fused in self.fused:
            fused.on(on)
        for layer, forward in self.compiled:
            if on:
                layer.forward = forward
            else:
                layer.__dict__.pop("forward", None)
        if self.inner is not None:
            if on:
                _register_attention()
            self.inner.set_attn_implementation(ATTENTION if on else "sdpa")


@functools.cache
def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def fp32_sdpa(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        dtype = query.dtype
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        with torch.autocast(query.device.type, enabled=False):
            out, weights = sdpa_attention_forward(
                module, query.float(), key.float(), value.float(), attention_mask, **kwargs
            )
        return out.to(dtype), weights

    AttentionInterface.register(ATTENTION, fp32_sdpa)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
