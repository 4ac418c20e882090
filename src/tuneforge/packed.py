"""Packed weights for batched generation on CPU: each decode step's matmuls run at the memory's speed.

A decode step multiplies a few rows (one per answer in the batch) by every weight of the model, so it is bound by how
fast the weights stream from memory. On a 2-core Xeon, `F.linear` with 8 rows goes through MKL's general sgemm and
streams ~6 GB/s, half of what a 1-row product (gemv) reaches; MKL's packed sgemm, with each weight reordered once for
the row count (what torch.compile's CPU freezing does), streams ~13 GB/s. bench/generate.py measures the difference.

The packs are copies of the weights, made at a Linear's first decode-shaped call and kept while `packed_weights` is
active, so the weights must not change inside the block (an adapter merged for the block is fine: merge, then pack).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import psutil
import torch
import torch.nn.functional as F

_ATTR = "_tuneforge_packs"
# Packing copies every Linear weight once; do it only while the copy takes under this share of the free memory.
MEMORY_SHARE = 0.5


class Packs:
    """MKL-packed copies of a model's fp32 Linear weights for one row count (a later count replaces them)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.rows = 0
        self.packed: dict[torch.nn.Linear, torch.Tensor] = {}

    @contextlib.contextmanager
    def decode_rows(self, rows: int) -> Iterator[None]:
        """Within the block, a Linear called on `rows` rows multiplies by its packed weight (other shapes, such as the
        prompt's forward pass, take the plain path: they are compute-bound)."""
        linears = [m for m in self.model.modules() if _packable(m)] if rows > 1 else []  # 1 row: gemv is as fast
        fresh = rows != self.rows  # packs for another row count are dropped first
        need = sum(m.weight.numel() * m.weight.element_size() for m in linears if fresh or m not in self.packed)
        if not linears or need > MEMORY_SHARE * psutil.virtual_memory().available:
            yield  # nothing to pack, or no room for the copies
            return
        if fresh:
            self.packed.clear()
            self.rows = rows
        for module in linears:
            module.forward = functools.partial(self._forward, module)  # type: ignore[method-assign]
        try:
            yield
        finally:
            for module in linears:
                vars(module).pop("forward", None)

    def _forward(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.numel() != self.rows * module.in_features:
            return F.linear(x, module.weight, module.bias)
        pack = self.packed.get(module)
        if pack is None:
            pack = self.packed[module] = torch.ops.mkl._mkl_reorder_linear_weight(module.weight.detach(), self.rows)
        return torch.ops.mkl._mkl_linear(x, pack, module.weight.detach(), module.bias, self.rows)


class _NoPacks(Packs):
    """Where MKL's packed sgemm is missing (GPUs, ARM CPUs, other dtypes): nothing changes."""

    @contextlib.contextmanager
    def decode_rows(self, rows: int) -> Iterator[None]:
        yield


@contextlib.contextmanager
def packed_weights(model: Any) -> Iterator[Packs]:
    """Share one set of packs across the generate() calls in the block (the model's weights must stay as they are);
    nested blocks use the outermost one's."""
    if (outer := getattr(model, _ATTR, None)) is not None:
        yield outer
        return
    if not available(model):
        yield _NoPacks(model)
        return
    packs = Packs(model)
    setattr(model, _ATTR, packs)
    try:
        yield packs
    finally:
        delattr(model, _ATTR)


def available(model: Any) -> bool:
    """Whether this torch build has MKL's packed sgemm and the model runs on the CPU."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return on_cpu and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def _packable(module: torch.nn.Module) -> bool:
    """A plain fp32 Linear whose whole weight is here (not an FSDP shard or a ZeRO-3 placeholder)."""
    if not isinstance(module, torch.nn.Linear):
        return False
    weight = module.weight.detach()
    whole = type(weight) is torch.Tensor and weight.shape == (module.out_features, module.in_features)
    return whole and weight.dtype == torch.float32 and weight.is_cpu
