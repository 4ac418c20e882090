"""Packed weights for batched generation on CPU: each decode step's matmuls run at the memory's speed.

A decode step multiplies a few rows (one per answer in the batch) by every weight of the model, so it is bound by how
fast the weights stream from memory. On a 2-core Xeon, `F.linear` with 8 rows goes through MKL's general sgemm and
streams ~6 GB/s, half of what a 1-row product (gemv) reaches; MKL's packed sgemm, with each weight reordered once
(what torch.compile's CPU freezing does), streams ~13 GB/s. bench/generate.py measures the difference. On a 2-core
AMD EPYC (Zen 4) it is the other way round (packs 7.5 GB/s, `F.linear` 9.6), so the packs are used only where a
measurement at the first decode step of the process finds them faster (`_packs_pay`).

The packs are copies of the weights, made at a Linear's first decode-shaped call and kept while `packed_weights` is
active, so the weights must not change inside the block (an adapter merged for the block is fine: merge, then pack).
A pack serves every row count: MKL packs the weight matrix alone, whatever row count torch passes when packing (a
test holds this for 1-40 rows against packs made for others), so a batch of another size reuses the packs.

A LoRA layer whose active adapter is not merged (a server switches adapters per request and does not merge: unmerging
leaves round-off in the base weights) is packed with the adapter folded in: its pack is a copy of W + scale * B @ A,
made from the untouched base weight, so a decode step skips the adapter's two extra products per layer (~25% of the
step for the embedded model with r=16 at batch 8) and the base weights never change. Such packs belong to one adapter
state (which adapters are active, disabled or merged); the packs of the states used before are kept too, while all
packs together take at most MEMORY_SHARE of the memory that would be free without them (the least recently used give
way first), so a server alternating between adapters does not pack anew per batch (0.1-0.9 s for the embedded model).
Linears outside any adapter layer (the output layer, or all but the adapted ones) have one pack for all states.

Weights loaded from a GGUF file (the embedded model's) are used as their 4- and 8-bit blocks instead
(tuneforge/gguf_blocks.py): 4.8x fewer bytes per step, also for a single row, and the same fp32 weights bit for bit.
The active adapters of such a layer run beside its blocks as one pair of small products (x @ A.T @ (scale * B).T,
made once per adapter state), so the blocks serve every adapter state.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, TypeGuard, cast

import psutil
import torch
import torch.nn.functional as F

from tuneforge.cpu import gguf_blocks
from tuneforge.cpu.timing import median_seconds

_ATTR = "_tuneforge_packs"
# Packing copies every Linear weight once (per adapter state); all copies together take at most this share of the memory
# that would be free without them.
MEMORY_SHARE = 0.5
# What packs depend on besides the weights: each adapter layer's disabled flag, active and merged adapters.
State = frozenset[tuple[bool, tuple[str, ...], tuple[str, ...]]]


class Packs:
    """MKL-packed copies of a model's fp32 Linear weights (LoRA layers' with their active adapter folded in), for the
    adapter state now in use and, while memory allows, for the states used before."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.rows = 0  # the row count of the decode steps running (or last run)
        self.state: State = frozenset()
        self.packed: dict[torch.nn.Module, torch.Tensor] = {}  # this state's packs (adapter layers and their Linears)
        self.shared: dict[torch.nn.Module, torch.Tensor] = {}  # Linears outside adapter layers: the same in every state
        self.kept: OrderedDict[State, dict[torch.nn.Module, torch.Tensor]] = OrderedDict()  # oldest first
        self.adapted: set[torch.nn.Module] = set()  # the modules of adapter layers
        # Linears whose weight is exactly GGUF blocks (None: it is not); a LoRA layer's base layer is the key
        self.blocks: dict[torch.nn.Module, gguf_blocks.BlockWeight | None] = {}
        self.fp32_packs = False  # whether the decode steps running use (and make) fp32 packs
        # this state's adapters beside GGUF blocks: each LoRA layer's A.T and (scale * B).T, all active adapters stacked
        self.low_rank: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    @contextlib.contextmanager
    def decode_rows(self, rows: int) -> Iterator[None]:
        """Within the block, a Linear called on `rows` rows multiplies by its GGUF blocks or its packed weight (other
        shapes, such as the prompt's forward pass, take the plain path: they are compute-bound)."""
        folded, linears, self.adapted = _targets(self.model)
        any_blocks = self._find_blocks([_base(m) for m in folded + linears])
        self._switch(_adapter_state(self.model))
        self.rows = rows
        # 1 row: gemv already streams the fp32 weights at full speed; and the copies only where some weight needs one
        # (not GGUF blocks), and they fit and pay
        fp32 = [m for m in folded + linears if not self.blocks.get(_base(m))]
        self.fp32_packs = rows > 1 and bool(fp32) and _packs_pay() and self._room(folded + linears)
        if not any_blocks and not self.fp32_packs:
            yield
            return
        for module in linears:
            module.forward = functools.partial(self._forward, module)  # type: ignore[method-assign]
        for module in folded:
            module.forward = functools.partial(self._folded_forward, module)
        try:
            yield
        finally:
            for module in folded + linears:
                vars(module).pop("forward", None)

    def _find_blocks(self, linears: list[torch.nn.Linear]) -> bool:
        """Look for GGUF blocks in the weights not checked yet; whether any Linear has them (and the kernel built)."""
        for linear in linears:
            if linear not in self.blocks:
                self.blocks[linear] = gguf_blocks.exact_blocks(linear.weight.detach())
        if any(self.blocks.values()) and gguf_blocks.kernels() is None:
            self.blocks = dict.fromkeys(self.blocks)  # no kernel on this machine: the fp32 path for all
        return any(self.blocks.get(linear) for linear in linears)

    def _switch(self, state: State) -> None:
        """Make `state`'s packs the current ones, keeping the last state's for a later turn."""
        if state == self.state:
            return
        self.low_rank = {}  # cheap to make again (~200 small copies), unlike the packs
        if self.packed:
            self.kept[self.state] = self.packed
        self.packed = self.kept.pop(state, {})
        self.state = state

    def _room(self, targets: list[Any]) -> bool:
        """Whether the packs still to make fit: all packs together may take MEMORY_SHARE of the memory that would be
        free without them; other states' packs are dropped (least recently used first) to make room."""
        held = _bytes([*self.packed, *self.shared, *(m for packs in self.kept.values() for m in packs)])
        held += sum(b.nbytes for b in self.blocks.values() if b is not None)
        todo = [m for m in targets if m not in self.packed and m not in self.shared and not self.blocks.get(_base(m))]
        need = _bytes(todo)
        budget = MEMORY_SHARE * (psutil.virtual_memory().available + held)
        while held + need > budget and self.kept:
            held -= _bytes(list(self.kept.popitem(last=False)[1]))
        return held + need <= budget

    def _forward(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.numel() != self.rows * module.in_features:
            return F.linear(x, module.weight, module.bias)
        if blocks := self.blocks.get(module):
            return blocks.linear(x, module.bias)
        if not self.fp32_packs:
            return F.linear(x, module.weight, module.bias)
        return self._product(module, x, module.weight.detach(), module.bias)

    def _folded_forward(self, module: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A LoRA layer's forward: with its adapter folded into the pack for decode rows (or beside its base layer's
        GGUF blocks), peft's own otherwise."""
        base = module.base_layer
        if torch.is_grad_enabled() or args or kwargs or x.numel() != self.rows * base.in_features:
            return type(module).forward(module, x, *args, **kwargs)
        if blocks := self.blocks.get(base):
            low = self.low_rank.get(module)
            if low is None:
                low = self.low_rank[module] = _low_rank(module)
            rows = x.reshape(-1, x.shape[-1])
            y = blocks.linear(rows, base.bias).addmm_(rows @ low[0], low[1])  # + scale * B @ A x, two plain products
            return y.view(*x.shape[:-1], y.shape[-1])
        if not self.fp32_packs:
            return type(module).forward(module, x)
        # the unfolded base weight is only F.linear's fallback for another row count, which the check above rules out
        return self._product(module, x, base.weight.detach(), base.bias)

    def _product(self, module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Any) -> torch.Tensor:
        packs = self.packed if module in self.adapted else self.shared
        pack = packs.get(module)
        if pack is None:
            pack = packs[module] = torch.ops.mkl._mkl_reorder_linear_weight(_folded_weight(module), self.rows)
        return torch.ops.mkl._mkl_linear(x, pack, weight, bias, self.rows)


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


@functools.cache
def _packs_pay() -> bool:
    """Whether MKL's packed sgemm multiplies decode rows faster than F.linear on this CPU, measured once per process on
    48 MB of weights (more than a server CPU's L3 holds, so they stream from memory as a model's do). On the 2-core
    Xeon of the first sessions packs streamed 13.5 GB/s against 5.8; on a 2-core AMD EPYC (Zen 4) 7.5 against 9.6."""
    rng = torch.Generator().manual_seed(0)  # its own: seeded sampling must not depend on whether this ran
    weights = [torch.randn(1536, 576, generator=rng) for _ in range(14)]
    packs = [torch.ops.mkl._mkl_reorder_linear_weight(w, 8) for w in weights]
    x = torch.randn(8, 576, generator=rng)
    plain, packed = median_seconds(
        lambda: [F.linear(x, w) for w in weights],
        lambda: [torch.ops.mkl._mkl_linear(x, pack, w, None, 8) for w, pack in zip(weights, packs, strict=True)],
    )
    return packed < 0.9 * plain


def _targets(model: Any) -> tuple[list[Any], list[torch.nn.Linear], set[torch.nn.Module]]:
    """The LoRA layers whose active adapters fold into their pack, the other Linears to pack (not those inside a
    folded layer: its forward no longer calls them for decode rows), and the modules of adapter layers (whose packs
    depend on the adapter state)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    folded: list[Any] = []
    linears: list[torch.nn.Linear] = []
    inside: set[torch.nn.Module] = set()
    adapted: set[torch.nn.Module] = set()
    for module in cast(torch.nn.Module, model).modules():  # a layer comes before the modules inside it
        if isinstance(module, BaseTunerLayer):
            adapted.update(module.modules())
        if module in inside:
            continue
        if _foldable(module):
            folded.append(module)
            inside.update(module.modules())
        elif _packable(module):
            linears.append(module)
    return folded, linears, adapted


def _foldable(module: torch.nn.Module) -> bool:
    """A peft LoRA Linear whose active adapters (plain LoRA, no dropout at work) are not merged: its output for a
    decode step is x @ (W + sum of scale * B @ A).T."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not isinstance(module, LoraLinear) or module.disable_adapters or module.merged:
        return False
    active = [a for a in module.active_adapters if a in module.lora_A]
    variants = getattr(module, "lora_variant", {})  # DoRA and other variants compute more than B @ A
    dropping = [a for a in active if module.training and getattr(module.lora_dropout[a], "p", 0) > 0]
    biased = [a for a in active if getattr(module, "lora_bias", {}).get(a)]  # lora_bias: B has a bias
    plain = not dropping and not biased and not any(a in variants for a in active)
    return bool(active) and plain and _packable(module.base_layer)


def _folded_weight(module: Any) -> torch.Tensor:
    """The weight a pack copies: a Linear's own, or a LoRA layer's base weight plus its active adapters' deltas."""
    weight = _weight(module)
    if isinstance(module, torch.nn.Linear):
        return weight
    deltas = [module.get_delta_weight(a).detach().float() for a in module.active_adapters if a in module.lora_A]
    return weight + sum(deltas)


def _low_rank(module: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A LoRA layer's active adapters as one pair: x @ a @ b = sum of scale * B @ A x (ranks stacked)."""
    names = [a for a in module.active_adapters if a in module.lora_A]
    a = torch.cat([module.lora_A[n].weight.detach() for n in names]).T.contiguous()
    b = torch.cat([module.lora_B[n].weight.detach() * module.scaling[n] for n in names], dim=1).T.contiguous()
    return a.float(), b.float()


def _bytes(modules: list[Any]) -> int:
    """The bytes of these modules' packs (fp32 copies of their weights)."""
    return sum(_weight(m).numel() * 4 for m in modules)


def _base(module: Any) -> torch.nn.Linear:
    """A Linear itself, or a LoRA layer's base Linear."""
    return module if isinstance(module, torch.nn.Linear) else module.base_layer


def _weight(module: Any) -> torch.Tensor:
    return _base(module).weight.detach()


def _adapter_state(model: Any) -> State:
    """The model's adapter state: each adapter layer's disabled flag, active and merged adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return frozenset(
        (m.disable_adapters, tuple(m.active_adapters), tuple(m.merged_adapters))
        for m in model.modules()
        if isinstance(m, BaseTunerLayer)
    )


def _packable(module: torch.nn.Module) -> TypeGuard[torch.nn.Linear]:
    """A plain fp32 Linear whose whole weight is here (not an FSDP shard or a ZeRO-3 placeholder)."""
    if not isinstance(module, torch.nn.Linear):
        return False
    weight = module.weight.detach()
    whole = type(weight) is torch.Tensor and weight.shape == (module.out_features, module.in_features)
    return whole and weight.dtype == torch.float32 and weight.is_cpu
