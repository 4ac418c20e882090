"""A LoRA Linear as one bf16 product on the CPU: y = [x, s·x·Aᵀ] @ [W, B]ᵀ, for bf16 autocast training.

PEFT computes a LoRA Linear as `base(x) + lora_B(lora_A(x)) * scaling`. Under bf16 autocast that is three products
and two passes over the output (the multiply and the add), and the add rounds: base(x) is already a bf16 number, so a
LoRA term below half a bf16 step of it is dropped, every time. Early in training, when B is small, the bf16 forward
hardly sees what the adapter has learnt (bench/train.py's LoRA run: step losses 0.03-0.07 above fp32's).

`FusedLora` holds the frozen weight in bf16 beside B, as one matrix [W | B] (B's r columns copied in at each call),
and puts x beside s·h = s·x·Aᵀ, so one product sums the base and the LoRA term in its fp32 accumulator before its
only rounding (the same step losses within 0.001 of fp32's). The backward has the same shape: one product of the
output's gradient with [W | B] gives the gradients of x and of h together. On the AMX Xeon this also ran the
bench's bf16 LoRA step 1.09x as fast as PEFT's (the multiply and add passes, a product and their autograd nodes gone).
"""

from __future__ import annotations

from typing import Any

import torch

BF16 = torch.bfloat16


def fusable(module: torch.nn.Module) -> bool:
    """Whether `module` is a PEFT LoRA Linear that `FusedLora` computes: one plain LoRA adapter (no DoRA, no dropout)
    on a frozen fp32 nn.Linear."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if type(module) is not LoraLinear or len(module.active_adapters) != 1:
        return False
    name = module.active_adapters[0]
    base = module.base_layer
    return (
        name in module.lora_A
        and name not in module.lora_variant
        and isinstance(module.lora_dropout[name], torch.nn.Identity)
        and not module.fan_in_fan_out
        and type(base) is torch.nn.Linear
        and base.weight.dtype == torch.float32
        and not base.weight.requires_grad
        and (base.bias is None or not base.bias.requires_grad)
    )


class FusedLora:
    """`module` (see `fusable`) computed as one bf16 product while `on`; `weight` is the bf16 copy of its frozen
    weight (a view of the joint matrix, for the base layer to hold meanwhile)."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.adapter = module.active_adapters[0]
        base = module.base_layer
        self.a, self.b = module.lora_A[self.adapter].weight, module.lora_B[self.adapter].weight
        n_out, n_in = base.weight.shape
        self.joint = torch.empty(n_out, n_in + self.b.shape[1], dtype=BF16, device=base.weight.device)
        self.joint[:, :n_in] = base.weight.detach()
        self.weight = self.joint[:, :n_in]

    def on(self, active: bool) -> None:
        """Route the module's calls here (or back to PEFT's forward)."""
        if active:
            self.module.forward = self.forward
        else:
            self.module.__dict__.pop("forward", None)
            _last.clear()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        module = self.module
        if (
            args
            or kwargs
            or not torch.is_autocast_enabled(x.device.type)
            or torch.get_autocast_dtype(x.device.type) != BF16
            or module.merged
            or module.disable_adapters
            or module.active_adapters != [self.adapter]
        ):
            return type(module).forward(module, x, *args, **kwargs)
        with torch.no_grad():
            self.joint[:, self.a.shape[1] :] = self.b
        bias = module.base_layer.bias
        with torch.autocast(x.device.type, enabled=False):
            y: torch.Tensor = _Product.apply(x, self.a, self.b, self.joint, bias, module.scaling[self.adapter])
        return y


_last: list[tuple[torch.Tensor, int, torch.Tensor]] = []  # the last input cast, for the next layers that read it


def _bf16_rows(x: torch.Tensor) -> torch.Tensor:
    """`x` as bf16 rows; q, k and v (gate and up) read the same fp32 input one after another: cast once for them."""
    if x.dtype == BF16:
        return x.reshape(-1, x.shape[-1])
    if torch.compiler.is_compiling():  # a compiled graph casts once by itself
        return x.reshape(-1, x.shape[-1]).to(BF16)
    if _last and _last[0][0] is x and _last[0][1] == x._version:
        return _last[0][2]
    rows = x.reshape(-1, x.shape[-1]).to(BF16)
    _last[:] = [(x, x._version, rows)]
    return rows


class _Product(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        joint: torch.Tensor,
        bias: torch.Tensor | None,
        scaling: float,
    ) -> torch.Tensor:
        rows = _bf16_rows(x)
        a16 = a.to(BF16)
        h = (rows @ a16.T).mul_(scaling)  # s·h: the scale on r columns, not on the output's
        both = torch.cat([rows, h], dim=1)
        y = both @ joint.T if bias is None else torch.addmm(bias.to(BF16), both, joint.T)
        ctx.save_for_backward(rows, a16, h)
        ctx.joint, ctx.scaling, ctx.shape, ctx.dtypes = joint, scaling, x.shape, (x.dtype, a.dtype, b.dtype)
        return y.reshape(*x.shape[:-1], joint.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        rows, a16, h = ctx.saved_tensors
        joint, n_in = ctx.joint, rows.shape[1]
        grad = grad.reshape(-1, joint.shape[0]).to(BF16)
        both = grad @ joint  # the gradients of x (through W) and of s·h, side by side
        grad_h = both[:, n_in:] * ctx.scaling
        x_dtype, a_dtype, b_dtype = ctx.dtypes
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addmm(both[:, :n_in], grad_h, a16).reshape(ctx.shape).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_a = (grad_h.T @ rows).to(a_dtype)
        if ctx.needs_input_grad[2]:
            grad_b = (grad.T @ h).to(b_dtype)
        return grad_x, grad_a, grad_b, None, None, None
