"""`tuneforge export RUN --to TARGET`: write the run's model for another runtime, load it there, check parity."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneforge.errors import RunError, TuneforgeError
from tuneforge.evaluation.model_card import write_model_card
from tuneforge.export.adapter import write_adapter
from tuneforge.export.classifier import check_classifier
from tuneforge.export.merged import write_merged
from tuneforge.export.parity import Parity, TransformersRuntime, TuneforgeRuntime, check_chat
from tuneforge.export.reward import check_reward_model
from tuneforge.export.runs import Run, open_run, reference_model
from tuneforge.models import resolve
from tuneforge.rundir import atomic_write_json

TARGETS = ("merged", "peft", "gguf", "classifier")
EXPORT_DIR = "export"  # runs/<name>/export/<target>
REPORT = "export.json"


class ExportError(TuneforgeError):
    """The export was written but its parity check failed: the artefact does not behave as the tuned model."""


@dataclass
class ExportResult:
    target: str
    folder: Path
    seconds: float
    parity: Parity | None
    facts: dict[str, Any] = field(default_factory=dict)  # the vLLM command, GGUF file, quantisation, ...

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "folder": str(self.folder),
            "seconds": round(self.seconds, 1),
            "parity": None if self.parity is None else {**asdict(self.parity), "ok": self.parity.ok},
            **self.facts,
        }


def export(
    run_dir: Path,
    target: str,
    out: Path | None = None,
    quant: str = "q8_0",
    prompts: int = 32,
    max_new_tokens: int | None = None,
    check: bool = True,
) -> ExportResult:
    """Write `target` for the run in `run_dir` into `out` (default runs/<name>/export/<target>), then (unless not
    `check`) load it in its runtime and compare it with tuneforge's own model; ExportError when they disagree."""
    if target not in TARGETS:
        raise RunError(f"unknown export target {target!r}", f"choose one of {', '.join(TARGETS)}")
    run = open_run(run_dir)
    _check_kind(run, target)
    name = f"gguf-{quant.lower()}" if target == "gguf" else target
    out = _free(out or run.cfg.run_dir / EXPORT_DIR / name)
    start = time.perf_counter()
    facts: dict[str, Any] = {
        "run": run.cfg.name, "base_model": run.hub_base, "method": run.cfg.train.method, "task": run.cfg.train.task
    }  # fmt: skip
    limit, length = prompts, max_new_tokens or run.cfg.evaluate.max_new_tokens
    parity = None
    torch.manual_seed(0)
    if target in ("merged", "classifier"):
        write_merged(run, out)
        if check:
            parity = _check_merged(run, out, limit, length)
    elif target == "peft":
        facts |= write_adapter(run, out)
        if check:
            parity = _check_peft(run, out, limit, length)
    else:
        from tuneforge.export.gguf import write_gguf

        facts |= write_gguf(run, out, quant)
        if check:
            from tuneforge.export.gguf import check_gguf

            # not lossless even as f32: llama.cpp keeps its attention cache in f16 (log-probs move by ~1e-2)
            parity = check_gguf(run, out / facts["gguf"], limit, length, lossless=False)
    result = ExportResult(target, out, time.perf_counter() - start, parity, facts)
    atomic_write_json(out / REPORT, result.to_json())
    write_model_card(run.cfg.run_dir, out, _card_section(result))
    if parity is not None and not parity.ok:
        raise ExportError(
            f"{out} was written, but it does not behave as the tuned model: " + "; ".join(parity.problems),
            f"see {out / REPORT} (examples of the disagreements); fix the cause and export again",
        )
    return result


def _free(out: Path) -> Path:
    """`out`, refused when it holds something other than an earlier export (the export replaces it)."""
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / REPORT).is_file()):
        raise RunError(
            f"{out} exists and is not an earlier export (no {REPORT}): it would be replaced",
            "choose an empty or new folder with --out",
        )
    return out


def _card_section(result: ExportResult) -> str:
    """The model card's section on this export: what it is and how it compared with tuneforge's own model."""
    facts = result.facts
    kinds = {"merged": "merged weights", "peft": "the adapter alone", "classifier": "a sequence-classification model"}
    what = kinds.get(result.target, f"GGUF {facts.get('quantisation')}")
    lines = ["## This export", "", f"- {what}, written by `tuneforge export --to {result.target}`"]
    if result.parity is not None:
        lines.append(f"- {result.parity.summary()}")
        lines += [f"- problem: {p}" for p in result.parity.problems]
    return "\n".join(lines)


def _check_kind(run: Run, target: str) -> None:
    if target == "classifier" and not run.classifier:
        raise RunError(
            f"{run.cfg.run_dir} is a train.task={run.cfg.train.task} run, not a classifier",
            "export it with --to merged, peft or gguf",
        )
    if target != "classifier" and run.classifier:
        raise RunError(
            f"{run.cfg.run_dir} is a classifier: --to {target} exports language models",
            "export it with --to classifier (a model for transformers.pipeline('text-classification'))",
        )


def _check_merged(run: Run, out: Path, limit: int, length: int) -> Parity:
    model, tokenizer = reference_model(run)
    if run.cfg.train.task == "reward":
        return check_reward_model(run, model, tokenizer, out, limit)
    if run.classifier:
        return check_classifier(run, model, tokenizer, out, limit)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, use_safetensors=True)
    target = TransformersRuntime(exported, AutoTokenizer.from_pretrained(out))
    return check_chat(run.cfg, TuneforgeRuntime(model, tokenizer), target, limit, length, lossless=True)


def _check_peft(run: Run, out: Path, limit: int, length: int) -> Parity:
    """The exported adapter on the base as transformers + PEFT load it (vLLM reads the same two files)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = reference_model(run)
    base_dir = resolve(run.cfg.model.name, run.cfg.model.revision).location
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
    exported = PeftModel.from_pretrained(base, str(out))
    target = TransformersRuntime(exported, AutoTokenizer.from_pretrained(base_dir))
    target.name = "transformers + peft"
    return check_chat(run.cfg, TuneforgeRuntime(model, tokenizer), target, limit, length, lossless=True)
