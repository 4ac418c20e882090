"""MODEL_CARD.md (the Hugging Face model-card format: YAML metadata, then sections) and the lineage behind it: which
code, config and data produced a run's model, how it scored, what it is for and where it falls short. Written by
`evaluate` into the run directory and by `export` beside each export; `tuneforge lineage` prints the same facts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tuneforge.config import EMBEDDED_HUB_ID, EMBEDDED_MODEL
from tuneforge.rundir import (
    CONFIG_FILE,
    DATA_REPORT,
    EVAL,
    MODEL_CARD,
    MODEL_DIR,
    RUN_INFO,
    atomic_write_text,
    file_sha256,
    load_run,
)  # fmt: skip

HYPERPARAMETERS = ("epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "lora_r", "lora_alpha",
                   "lora_dropout", "precision", "seed", "dpo_beta")  # fmt: skip


def lineage(run_dir: Path) -> dict[str, Any]:
    """What produced the run's model: code, config, data sources and splits (hashes, records), base model, and the
    model files' hashes (the lineage recorded at training, else what can be read now)."""
    cfg = load_run(run_dir)
    model_dir = cfg.run_dir / MODEL_DIR
    info = _json(model_dir / RUN_INFO) or {}
    report = _json(cfg.run_dir / DATA_REPORT) or {}
    sources = []
    for key in ("source", "test_source"):
        for name in str(report.get(key) or "").split(", "):
            path = Path(name)
            if name and path.is_file():
                sources.append({"path": name, "sha256": file_sha256(path), "bytes": path.stat().st_size})
            elif name:
                sources.append({"path": name, "sha256": None})
    weights = sorted(model_dir.glob("*.safetensors"))
    return {
        "run": cfg.name,
        "base_model": {"name": cfg.model.name, "hub_id": hub_id(cfg.model.name), "revision": cfg.model.revision},
        "method": cfg.train.method,
        "task": cfg.train.task,
        "recorded": info.get("lineage"),  # at training: code, config hash, splits
        "config_sha256_now": file_sha256(cfg.run_dir / CONFIG_FILE),
        "data_sources": sources,
        "records": report.get("counts"),
        "privacy": {"mode": cfg.privacy.mode, **(report.get("privacy") or {})},
        "model_files": [{"file": p.name, "sha256": file_sha256(p)} for p in weights],
    }


def hub_id(name: str) -> str:
    """A base model as other tools name it (the embedded default by its hub id)."""
    return EMBEDDED_HUB_ID if name == EMBEDDED_MODEL else name


def model_card(run_dir: Path, extra: str = "") -> str:
    """The card's text; `extra`: a section to add (an export's parity check)."""
    cfg = load_run(run_dir)
    facts = lineage(run_dir)
    scores = _json(cfg.run_dir / EVAL)
    classifier = cfg.train.task in ("classify", "reward")
    meta = {
        "base_model": facts["base_model"]["hub_id"],
        "library_name": "peft" if cfg.train.method in ("lora", "dora", "qlora") else "transformers",
        "pipeline_tag": "text-classification" if classifier else "text-generation",
        "tags": ["tuneforge", cfg.train.method, cfg.train.task],
    }
    task = {
        "classify": f"classify texts into {len(_labels(run_dir))} classes",
        "reward": "score answers to prompts like those as the annotators preferred them (a reward model: one number, "
        "higher is preferred)",
    }.get(cfg.train.task, "answer prompts like those")
    train = cfg.train.model_dump()
    shown = [k for k in HYPERPARAMETERS if train.get(k) is not None]
    shown = [
        k
        for k in shown
        if (k != "dpo_beta" or cfg.train.task in ("dpo", "kto", "orpo"))
        and (not k.startswith("lora_") or meta["library_name"] == "peft")
    ]
    hyper = ", ".join(f"{k}={train[k]}" for k in shown)
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {cfg.name}", "",
        f"{facts['base_model']['hub_id']} fine-tuned by tuneforge ({cfg.train.method}, task {cfg.train.task}).", "",
        "## Intended use", "",
        f"The task of its training data ({', '.join(s['path'] for s in facts['data_sources']) or 'see lineage'}): "
        f"{task}, in the languages and formats of that data. It is not a general assistant: outside that task it "
        "answers as the base model does, or worse.", "",
        "## Training", "",
        f"- Base model: {facts['base_model']['hub_id']} (revision {facts['base_model']['revision'] or 'as shipped'})",
        f"- Method and hyperparameters: {cfg.train.method}; {hyper}",
        *_data_lines(facts),
        "", "## Evaluation", "",
        *_evaluation_lines(scores),
        "", "## Known limits", "",
        *_limits(scores, facts),
        "", "## Lineage", "",
        *_lineage_lines(facts),
    ]  # fmt: skip
    return "\n".join(lines) + ("\n\n" + extra.strip() if extra else "") + "\n"


def write_model_card(run_dir: Path, folder: Path | None = None, extra: str = "") -> Path:
    """Write MODEL_CARD.md into `folder` (default: the run directory)."""
    path = (folder or Path(run_dir)) / MODEL_CARD
    atomic_write_text(path, model_card(run_dir, extra))
    return path


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _labels(run_dir: Path) -> list[str]:
    return list((_json(Path(run_dir) / MODEL_DIR / RUN_INFO) or {}).get("labels") or [])


def _data_lines(facts: dict[str, Any]) -> list[str]:
    lines = ["- Data files (content SHA-256):"]
    lines += [f"  - `{s['path']}` {s['sha256'] or '(not a file: a folder or dataset)'}" for s in facts["data_sources"]]
    lines.append(f"- Records per split: {facts['records']}")
    privacy = facts["privacy"]
    found = privacy.get("found") or {}
    lines.append(
        f"- Personal data: privacy mode {privacy['mode']}; found "
        + (", ".join(f"{k} x{v}" for k, v in found.items()) or "none")
        + (f" in {privacy['records']} records" if privacy.get("records") else "")
    )
    return lines


def _evaluation_lines(scores: dict[str, Any] | None) -> list[str]:
    if not scores:
        return ["Not evaluated yet: `tuneforge evaluate` writes the scores here."]
    models = scores["models"]
    names = list(models)
    lines = [f"On the held-out {scores['split']} split ({scores['n']} examples), 95% bootstrap intervals:", "",
             "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]  # fmt: skip
    for metric in models.get("tuned", next(iter(models.values()))):
        cells = []
        for name in names:
            value, bounds = models[name].get(metric), scores.get("intervals", {}).get(name, {}).get(metric)
            cells.append(
                "" if value is None else f"{value:.4g}" + (f" [{bounds[0]:.3g}, {bounds[1]:.3g}]" if bounds else "")
            )
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    forgetting = scores.get("forgetting")
    if forgetting:
        lines += ["", f"Forgetting check: {json.dumps(forgetting.get('verdict', forgetting))[:300]}"]
    return lines


def _limits(scores: dict[str, Any] | None, facts: dict[str, Any]) -> list[str]:
    lines = []
    if scores and scores["n"] < 100:
        lines.append(f"- Scored on {scores['n']} held-out examples only: the intervals above are wide.")
    if not scores or not scores.get("forgetting"):
        lines.append("- No forgetting check was run: general abilities after tuning are not measured.")
    lines.append("- Only as good as its training data: biases and gaps in it are learned too.")
    if facts["privacy"]["mode"] == "report" and facts["privacy"].get("found"):
        lines.append("- Personal data was found and kept (privacy mode report): the model may repeat it.")
    return lines


def _lineage_lines(facts: dict[str, Any]) -> list[str]:
    recorded = facts["recorded"] or {}
    code = recorded.get("code") or {}
    if not recorded:
        return [
            "- Not recorded: this model was trained before tuneforge recorded lineage (train it again to record it)",
            f"- Config now: config.yaml SHA-256 {facts['config_sha256_now']}",
            *[f"- Weights: {m['file']} SHA-256 {m['sha256']}" for m in facts["model_files"]],
        ]
    lines = [
        f"- Code: tuneforge {code.get('tuneforge', '?')}"
        + (
            f", commit {code['commit']}{' (with local changes)' if code.get('dirty') else ''}"
            if code.get("commit")
            else ""
        ),  # fmt: skip
        f"- Config: config.yaml SHA-256 {recorded.get('config_sha256') or facts['config_sha256_now']}",
    ]
    for split, info in (recorded.get("splits") or {}).items():
        lines.append(f"- Split {split}: {info['records']} records, SHA-256 {info['sha256']}")
    lines += [f"- Weights: {m['file']} SHA-256 {m['sha256']}" for m in facts["model_files"]]
    if recorded.get("trained_at"):
        lines.append(f"- Trained at {recorded['trained_at']}")
    return lines
