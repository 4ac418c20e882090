"""Where one LoRA training step's time goes, fp32 against bf16: bench/train.py's run under torch.profiler.

    python bench/profile_step.py                          # fp32 and bf16, 3 profiled steps each (~2 min)
    python bench/profile_step.py --steps 2 --set train.micro_batch_tokens=1024
    python bench/profile_step.py --runs bf16 --table 30               # and the 30 costliest ops by self time
    python bench/profile_step.py --runs fp32 bf16 bf16:train.compile=true --set train.threads=1
    python bench/profile_step.py --method classify    # bench/train.py's classification run instead

The runs (`--runs`: a precision, and after a colon comma-separated overrides of that run alone) are built in one
process exactly as `tuneforge train` builds them for bench/train.py's LoRA run (the same seeded data, config and
steps; `--set key=value` changes all) and driven by the loop's own `optimizer_step`. First the steps run
unprofiled, in turns (fp32 step i, bf16 step i, ...), so a slow spell of a shared machine falls on all: real
tokens/s and their ratio to the first run's. Then the next `--steps` steps run under the profiler (record_shapes),
again in turns, and every op's self time is put in one category:

  matmul base / LoRA      aten::mm & co. of the frozen layers, and of the adapters (a dimension equal to r; on the
                          fused bf16 path, fused_lora.py, B's product rides in the base one)
  loss                    the chunked output layer + cross-entropy (linear_ce), its matmuls and the rest
  attention               the SDPA kernels, forward and backward (the fp32 copies of q, k, v count as casts)
  casts                   dtype conversions (aten::to / _to_copy and the copy_ under them)
  elementwise             every other computing op: silu, mul, add, RMSNorm's pow/mean/rsqrt, rotary, ...
                          (with train.compile: Inductor's fused kernels)
  views & allocation      view, reshape, transpose, empty, ... (no arithmetic)
  autograd nodes          the backward nodes' own time (MmBackward0 ...) outside the ops they call, and
                          torch.compile's own (guards, the compiled function's wrappers)
  optimizer               gradient clipping, AdamW and zero_grad
  outside ops             the step's wall time the profiler saw in no op: Python, the loop, the engine

The profiler's per-op cost inflates the small ops: compare shares between the runs, not the profiled
milliseconds with the unprofiled ones.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmm_", "aten::_mkldnn_linear"}
CASTS = {"aten::to", "aten::_to_copy"}
VIEWS = {
    "aten::view", "aten::reshape", "aten::_unsafe_view", "aten::transpose", "aten::t", "aten::as_strided",
    "aten::slice", "aten::select", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::permute",
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::detach", "detach", "detach_", "aten::detach_",
    "aten::alias", "aten::_reshape_alias", "aten::resize_", "aten::result_type", "aten::lift_fresh",
    "aten::contiguous", "aten::split", "aten::split_with_sizes", "aten::unbind", "aten::chunk", "aten::narrow",
    "aten::set_", "aten::_has_compatible_shallow_copy_type", "aten::is_nonzero", "aten::item",
    "aten::_local_scalar_dense", "aten::numel", "aten::size", "aten::stride", "aten::dim",
}  # fmt: skip
ORDER = [
    "matmul base", "matmul LoRA", "loss: output-layer matmuls", "loss: softmax & rest", "attention forward",
    "attention backward", "casts", "elementwise", "views & allocation", "autograd nodes", "optimizer", "outside ops",
]  # fmt: skip


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_train", HERE / "train.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


class Run:
    """bench/train.py's LoRA (or classify) run in `precision`, set up as loop.train sets it up; `step(i)` runs
    optimizer step i."""

    def __init__(self, bench: Any, data: Path, work: Path, spec: str, overrides: list[str], method: str) -> None:
        from tuneforge.config import load_config
        from tuneforge.data import prepare
        from tuneforge.models import load_tokenizer
        from tuneforge.rundir import split_path
        from tuneforge.train import steps
        from tuneforge.train.auto import group_by_length
        from tuneforge.train.parallel import Parallel
        from tuneforge.train.precision import cpu_bf16
        from tuneforge.train.setup import micro_batch_tokens, optimization, setup_model
        from tuneforge.train.tasks import TASKS, TaskContext, step_groups

        precision, _, own = spec.partition(":")
        out = work / "".join(c if c.isalnum() else "_" for c in spec)
        settings = bench.tuneforge_settings(method, data, out, 100)
        cfg = load_config(
            None, [*settings, f"train.precision={precision}", *overrides, *(o for o in own.split(",") if o)]
        )
        prepare(cfg)
        if cfg.train.threads:  # as loop.train sets them
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        tokenizer = load_tokenizer(cfg.model.name)
        self.task, self.cfg, self.precision, self.steps = TASKS[cfg.train.task], cfg, precision, steps
        self.examples = self.task.load(split_path(cfg.run_dir, "train"), tokenizer, TaskContext.of(cfg))
        self.lengths = [self.task.length(e) for e in self.examples]
        model, hp = setup_model(cfg, "cpu", precision, lambda *a: None, self.lengths, 0.5)
        self.max_tokens = micro_batch_tokens(cfg.train, "cpu")
        self.fast = cpu_bf16(model, "cpu", precision, cfg.train.method, compile=cfg.train.compile)
        self.model, self.params, self.optimizer, self.scheduler, _ = optimization(
            model, cfg.train, hp, 100, None, Parallel()
        )
        self.model.train()
        self.pad, self.batch = int(tokenizer.pad_token_id), hp.batch_size
        self.groups = step_groups(self.lengths, hp.batch_size, cfg.train.seed, group_by_length(cfg.train))

    def step(self, i: int) -> tuple[float, int, float, float]:
        """Optimizer step `i`: its loss, real tokens, seconds and CPU seconds of this process."""
        from tuneforge.train.tasks import collate_step

        group = self.groups[i % len(self.groups)]
        examples = [self.examples[j] for j in group]
        batches = collate_step(self.task, examples, self.batch, self.pad, 0, 1, self.max_tokens)
        n_loss = sum(self.task.units(e) for e in examples)
        with self.fast:
            start, cpu = time.perf_counter(), time.process_time()
            loss = self.steps.optimizer_step(
                self.model, batches, self.optimizer, self.scheduler, self.params, self.cfg.train, "cpu", self.precision,
                n_loss,
            )  # fmt: skip
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return loss, sum(self.lengths[j] for j in group), seconds, cpu


def _ancestors(event: Any) -> list[str]:
    names = []
    parent = event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def categorise(event: Any, rank: int, after_backward: bool) -> str:
    """The category of one profiled op's self time (see the module docstring)."""
    name, above = event.name, _ancestors(event)
    if after_backward or any(a.startswith("Optimizer.") for a in above) or name.startswith("Optimizer."):
        return "optimizer"
    if any("_LinearCrossEntropy" in a for a in [name, *above]):
        return "loss: output-layer matmuls" if name in MATMULS else "loss: softmax & rest"
    if any("scaled_dot_product" in a or "ScaledDotProduct" in a for a in [name, *above]):
        return "attention backward" if any(a.startswith("autograd::") for a in above) else "attention forward"
    if name.startswith("## Call CompiledFxGraph"):  # torch.compile's fused kernels, between the products it calls
        return "elementwise"
    if name in MATMULS:
        dims = {d for shape in event.input_shapes or [] for d in shape[-2:]}
        return "matmul LoRA" if rank in dims else "matmul base"
    if name in CASTS or any(a in CASTS for a in above):
        return "casts"
    if name in VIEWS:
        return "views & allocation"
    if not name.startswith("aten::"):
        return "autograd nodes"
    return "elementwise"


def _top(event: Any) -> Any:
    while event.cpu_parent is not None:
        event = event.cpu_parent
    return event


def _clip_ids(events: list[Any]) -> frozenset[int]:
    """The top-level ops between a step's last backward and its AdamW step: the gradient clipping."""
    found: set[int] = set()
    pending: list[int] = []
    for e in sorted((e for e in events if e.cpu_parent is None), key=lambda e: e.time_range.start):
        if e.name.startswith("autograd::"):
            pending = []
        elif e.name.startswith("Optimizer.step"):
            found.update(pending)
        else:
            pending.append(e.id)
    return frozenset(found)


def breakdown(run: Run, step: int) -> tuple[dict[str, float], Any, int]:
    """Milliseconds by category of optimizer step `step` run under the profiler, its op table and its real tokens."""
    total: dict[str, float] = collections.defaultdict(float)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        _, tokens, wall, _ = run.step(step)
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    rank = int(run.cfg.train.lora_r) if run.cfg.train.lora_r != "auto" else 16
    clipping = _clip_ids(events)
    for e in events:
        total[categorise(e, rank, _top(e).id in clipping)] += e.self_cpu_time_total / 1000
    total["outside ops"] = max(0.0, 1000 * wall - sum(total.values()))
    return total, prof.key_averages(), tokens


def _profiled(runs: dict[str, Run], first: int, steps: int) -> dict[str, tuple[dict[str, float], Any, int]]:
    """Per run: milliseconds per step by category over steps `first`.. (run in turns, each profiled alone), the op
    table of its last one and the real tokens of all."""
    results: dict[str, tuple[dict[str, float], Any, int]] = {}
    for i in range(first, first + steps):
        for p, run in runs.items():
            ms, table, tokens = breakdown(run, i)
            before, _, seen = results.get(p, ({}, None, 0))
            results[p] = ({k: before.get(k, 0.0) + ms.get(k, 0.0) / steps for k in ORDER}, table, seen + tokens)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["lora", "classify"], default="lora", help="bench/train.py's run")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per run (after the timed ones)")
    parser.add_argument("--timed", type=int, default=4, help="unprofiled steps per run, in turns")
    parser.add_argument("--runs", nargs="+", default=["fp32", "bf16"], help="PRECISION[:KEY=VALUE,...] each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (both)")
    parser.add_argument("--table", type=int, default=0, help="also print this many costliest ops per precision")
    args = parser.parse_args()
    bench = _load_bench()
    with tempfile.TemporaryDirectory(prefix="tf-profile-") as tmp:
        work = Path(tmp)
        if args.method == "classify":  # bench/train.py's reviews
            data = work / "reviews.jsonl"
            bench.write_reviews(data, work / "reviews-held.jsonl", bench.REVIEWS)
        else:
            data = work / "all.jsonl"
            bench.write_data(data, 300)  # bench/train.py's first 300 examples: its training set
        runs = {spec: Run(bench, data, work, spec, args.set, args.method) for spec in args.runs}
        for run in runs.values():
            run.step(0)  # warm-up: first touches, autocast caches, oneDNN's primitive caches
        _timed(runs, args.timed)
        first = 1 + args.timed
        if not args.steps:
            return
        results = _profiled(runs, first, args.steps)
        _print(results, args.steps)
        for p, (_, table, _) in results.items():
            if args.table:
                print(f"\n{p}: the {args.table} costliest ops by self time in its last profiled step")
                print(table.table(sort_by="self_cpu_time_total", row_limit=args.table))


def _timed(runs: dict[str, Run], steps: int) -> None:
    """Steps 1..`steps` of every run in turns, unprofiled: real tokens/s by wall time and by this process's CPU time
    (with train.threads=1 the CPU time hardly depends on what else the machine runs)."""
    tokens, wall, cpu = dict.fromkeys(runs, 0), dict.fromkeys(runs, 0.0), dict.fromkeys(runs, 0.0)
    for i in range(1, 1 + steps):
        for p, run in runs.items():
            _, n, seconds, cpu_seconds = run.step(i)
            tokens[p], wall[p], cpu[p] = tokens[p] + n, wall[p] + seconds, cpu[p] + cpu_seconds
    first = next(iter(runs))
    for name, spent in (("wall", wall), ("CPU", cpu)):
        speed = {p: tokens[p] / spent[p] for p in runs}
        line = ", ".join(f"{p} {v:.0f} ({v / speed[first]:.2f}x)" for p, v in speed.items())
        print(f"unprofiled steps 1-{steps} in turns, real tokens/s by {name} time: {line}")


def _print(results: dict[str, tuple[dict[str, float], Any, int]], steps: int) -> None:
    names = list(results)
    width = {p: max(10, len(p) + 4) for p in names}
    print(f"\nprofiled steps ({steps} per run), ms per step and share of the step:")
    print(f"{'category':<28}" + "".join(f"{p + ' ms':>{width[p]}}{'share':>7}" for p in names))
    walls = {p: sum(r[0].values()) for p, r in results.items()}
    for category in ORDER:
        row = f"{category:<28}"
        for p in names:
            ms = results[p][0].get(category, 0.0)
            row += f"{ms:>{width[p]}.1f}{100 * ms / walls[p]:>6.1f}%"
        print(row)
    print(f"{'step (profiled)':<28}" + "".join(f"{walls[p]:>{width[p]}.1f}{'':>7}" for p in names))
    print(f"{'real tokens per step':<28}" + "".join(f"{results[p][2] / steps:>{width[p]}.0f}{'':>7}" for p in names))


if __name__ == "__main__":
    main()
