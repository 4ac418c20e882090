"""Decode steps from GGUF-quantised weights: the products read 4- and 8-bit codes, the answers stay fp32's.

A model loaded from a GGUF file (the embedded SmolLM2 is Q4_1 with a Q8_0 embedding) is dequantised by transformers
into fp32 weights, 5.6x the bytes the file holds (4.8x what tuneforge keeps: its scales are fp32). A decode step
streams every weight once, so on a CPU it is bound by those bytes. Each fp32 weight still is exactly `d * q + m`
(Q4_1) or `d * q` (Q8_0) for the codes and fp16 scales of its block of 32, so `exact_blocks` recovers the codes and
checks them bit for bit against the weight; the kernel in csrc/quant_matmul.cpp rebuilds each weight in registers
with the same fp32 arithmetic and multiplies in fp32. The products differ from `F.linear`'s only in the order of the
sums (relative 1e-6), as MKL's own do. A weight that is not exactly such blocks (fp32 or bf16 checkpoints, fully
fine-tuned or merged weights) keeps the fp32 path.

The kernel is built once per machine by torch.utils.cpp_extension (g++ and ninja, ~30 s, cached under
TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions) for the CPU it runs on; it needs AVX-512. Where it cannot be built,
`kernels()` returns None, the reason is logged once, and generation takes the fp32 path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).parent / "csrc" / "quant_matmul.cpp"


@dataclass(frozen=True)
class BlockWeight:
    """A Linear weight as GGUF blocks of 32: `codes` (Q4_1: two 4-bit codes per byte; Q8_0: int8) and fp32 `scales`
    (Q4_1: d and m per block; Q8_0: d per block)."""

    format: str  # "Q4_1" or "Q8_0"
    codes: torch.Tensor
    scales: torch.Tensor
    out_features: int

    @property
    def nbytes(self) -> int:
        return self.codes.numel() * self.codes.element_size() + self.scales.numel() * self.scales.element_size()

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x @ W.T (+ bias) for x of any leading shape (a decode step calls this ~200 times: kept lean)."""
        ops = kernels()
        assert ops is not None, "BlockWeight.linear needs the built kernel (kernels() returned None)"
        product = ops.q4_1_linear if self.format == "Q4_1" else ops.q8_0_linear
        y = product(x.reshape(-1, x.shape[-1]).contiguous(), self.codes, self.scales, self.out_features)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if bias is None else y.add_(bias)


def exact_blocks(weight: torch.Tensor) -> BlockWeight | None:
    """The weight as Q4_1 or Q8_0 blocks if it is exactly their dequantised values (every element, bit for bit);
    None otherwise, or where the kernel is not built."""
    if weight.dim() != 2 or weight.dtype != torch.float32 or weight.shape[1] % 32 or not weight.numel():
        return None
    with torch.no_grad():
        # the first row checked here: most weights fail on it, before any kernel is built; the C++ pass finds the codes
        first = weight[:1].reshape(1, -1, 32)
        formats = [fmt for fmt, exact in (("Q4_1", _q4_1), ("Q8_0", _q8_0)) if exact(first)]
        if not formats or (ops := kernels()) is None:
            return None
        for fmt in formats:  # then the whole weight, in one pass in C++
            found = (ops.q4_1_blocks if fmt == "Q4_1" else ops.q8_0_blocks)(weight.contiguous())
            if found:
                return BlockWeight(fmt, found[0], found[1], weight.shape[0])
    return None


def _q4_1(v: torch.Tensor) -> bool:
    """Whether blocks v (..., 32) are d * q + m for 4-bit codes q (fp16 d and m, as llama.cpp stores them)."""
    m = v.amin(-1)
    # llama.cpp's quantiser gives the block's minimum code 0 and its maximum code 15
    d = ((v.amax(-1) - m) / 15).half().float()
    if not torch.equal(m.half().float(), m):
        return False
    q = torch.round((v - m[..., None]) / torch.where(d > 0, d, 1)[..., None]).clamp_(0, 15)
    return torch.equal(d[..., None] * q + m[..., None], v)


def _q8_0(v: torch.Tensor) -> bool:
    """Whether blocks v (..., 32) are d * q for int8 codes q (fp16 d)."""
    # the largest magnitude gets code +-127, so d is that magnitude / 127, exactly
    d = v.abs().amax(-1) / 127
    if not torch.equal(d.half().float(), d):
        return False
    q = torch.round(v / torch.where(d > 0, d, 1)[..., None]).clamp_(-127, 127)
    return torch.equal(d[..., None] * q, v)


@functools.cache
def kernels() -> Any | None:
    """The compiled kernel module, built on first use; None (and the reason logged) where it cannot be."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        log.info("GGUF-block decode kernel: x86-64 only; decode steps use fp32 weights")
        return None
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # a venv run without activating it: its bin/, where pip put ninja, is off PATH
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    # one build per kind of CPU (-march=native), so a home directory shared by machines never loads the wrong one
    name = f"tuneforge_quant_matmul_{hashlib.sha256(_cpu_flags().encode()).hexdigest()[:12]}"
    try:
        log.info("building the GGUF-block decode kernel once for this CPU (~30 s; cached)")
        # -fopenmp: at::parallel_for is inline in ATen's headers and runs on one thread without it (2x slower here);
        # the library it names is torch's own libgomp, already loaded under the same soname
        flags = ["-O3", "-march=native", "-fopenmp"]
        module = cpp_extension.load(name, [str(_SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # no compiler, no ninja, a read-only cache: generation works without it
        log.warning("GGUF-block decode kernel not built (%s); decode steps use fp32 weights", str(err).strip()[:300])
        return None
    if not module.built_with_avx512():
        log.info("GGUF-block decode kernel: this CPU lacks AVX-512; decode steps use fp32 weights")
        return None
    return module


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line for line in text.splitlines() if line.startswith("flags")), platform.processor())
