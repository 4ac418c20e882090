"""Checkpoints and saved models: written atomically, read back for --resume, early stopping and every later stage.

Each folder is written under a temporary name and renamed when complete, so a run killed while saving leaves the
previous one intact. With several processes every process calls the savers (a sharded model's state is gathered
from all of them) and the main one writes.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tuneforge.config import RunConfig
from tuneforge.data.labels import class_labels
from tuneforge.errors import TrainingError
from tuneforge.rundir import CHECKPOINTS, MODEL_DIR, RUN_INFO, atomic_write_json, lineage_record
from tuneforge.train.methods import METHODS
from tuneforge.train.parallel import Parallel


class Progress:
    """Progress of one training run: steps, examples and tokens seen, latest losses (saved with checkpoints)."""

    def __init__(self) -> None:
        self.step = 0
        self.examples = 0
        self.tokens = 0
        self.last_loss = float("nan")
        self.val_loss: float | None = None
        self.elapsed = 0.0
        self.best_val: float | None = None
        self.best_step = 0
        self.bad_evals = 0  # evaluations since val_loss last improved

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        state = cls()
        for key, value in data.items():
            if hasattr(state, key):
                setattr(state, key, value)
        return state

    def record(self, loss: float, examples: int, tokens: int) -> None:
        self.step += 1
        self.examples += examples
        self.tokens += tokens
        self.last_loss = loss

    def row(self, lr: float, n_train: int, elapsed: float, total_steps: int) -> dict[str, Any]:
        """The metrics.jsonl line of the latest step (`total_steps`: the run's planned steps, for an estimate)."""
        return {
            "step": self.step,
            "total_steps": total_steps,
            "epoch": round(self.examples / n_train, 4),
            "loss": round(self.last_loss, 5),
            "lr": lr,
            "tokens_per_s": round(self.tokens / elapsed, 1),
            "elapsed_s": round(elapsed, 2),
        }


def save_weights(model: Any, target: Path) -> None:
    """The trainable weights (adapter or whole model) to `target`, replaced atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".best-", dir=target.parent))
    model.save_pretrained(tmp)
    _swap_in(tmp, target)


def _swap_in(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` in the place of `final` (the old one goes only after the new one is in)."""
    old = final.with_name(f".{final.name}-old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    run_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: Progress, keep: int, par: Parallel | None = None
) -> Path:
    """Write checkpoints/step-N atomically (weights, optimizer, scheduler, RNG, progress); keep the newest `keep`.

    Every process calls it (a sharded model's state is gathered from all of them); the main one writes. The folder
    is written under a temporary name and renamed when complete: a run killed while saving leaves the previous
    checkpoints intact and nothing that --resume would mistake for a checkpoint.
    """
    par = par or Parallel()
    root = run_dir / CHECKPOINTS
    final = root / f"step-{state.step}"
    weights, optimizer_state = par.full_state(model), par.optimizer_state(model, optimizer)
    if not par.main:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".step-", dir=root))
    model.save_pretrained(tmp, state_dict=weights)
    torch.save(
        {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()},
        tmp / "training_state.pt",
    )
    atomic_write_json(tmp / "trainer_state.json", {**state.to_json(), "python_rng": list(random.getstate()[1])})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = run_dir / CHECKPOINTS
    done = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()] if root.is_dir() else []
    return sorted(done, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest finished checkpoint of a run, or None."""
    done = _checkpoints(run_dir)
    return done[-1] if done else None


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, par: Parallel | None = None) -> Progress:
    """Restore optimizer, scheduler and RNG from a checkpoint (the weights are loaded before the model is wrapped);
    returns the progress it recorded."""

    def read() -> tuple[dict[str, Any], dict[str, Any]]:
        saved = torch.load(path / "training_state.pt", weights_only=True)
        return saved, json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))

    saved, info = checkpoint_part(path, read)
    (par or Parallel()).load_optimizer_state(model, optimizer, saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate((3, tuple(info.pop("python_rng")), None))
    return Progress.from_json(info)


def restore_weights(path: Path, model: Any) -> None:
    """Load a checkpoint's weights into the (not yet wrapped) model of a resumed run."""
    checkpoint_part(path, lambda: load_weights(model, path))


def checkpoint_part(path: Path, read: Callable[[], Any]) -> Any:
    """read() a part of a checkpoint; a damaged checkpoint becomes a TrainingError that says what to do."""
    try:
        return read()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise TrainingError(
            f"checkpoint {path} cannot be loaded: {str(exc).splitlines()[0]}",
            "delete this checkpoint folder to resume from the one before, or train without --resume",
        ) from None


def load_weights(model: Any, path: Path) -> None:
    """Load saved weights into `model`: a PEFT adapter, or a whole model's safetensors (one file or shards)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if (path / "adapter_model.safetensors").is_file():
        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        return
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(path / name))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:  # a tied head is saved once
        raise ValueError(f"weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def save_model(
    run_dir: Path, model: Any, tokenizer: Any, cfg: RunConfig, state_dict: dict[str, Any] | None = None
) -> Path:
    """Write the final adapter (PEFT) or whole model (full, freeze), safetensors, with tokenizer and chat template,
    to runs/<name>/model atomically (`state_dict`: a sharded model's gathered weights)."""
    final = run_dir / MODEL_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=run_dir))
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(
        tmp / RUN_INFO,
        {
            "base_model": cfg.model.name,
            "revision": cfg.model.revision,
            "method": cfg.train.method,
            "adapter": METHODS[cfg.train.method].adapter,
            "task": cfg.train.task,
            "run": cfg.name,
            # the head's classes, in order
            **({"labels": class_labels(cfg.data, cfg.run_dir)} if cfg.train.task == "classify" else {}),
            "lineage": lineage_record(cfg),  # the code, config and exact splits that made this model
        },
    )
    _swap_in(tmp, final)
    return final
