"""The evaluate stage: base vs tuned on the same held-out split, saved to eval.json and predictions.jsonl.

`evaluate` loads every model the run compares (base, tuned, those of evaluate.compare) and hands them to the
evaluator of the run's task: language.py (sft, pretrain, multitask), classifier.py (classify) or preference.py (dpo).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data.labels import class_labels
from tuneforge.errors import ConfigError, RunError
from tuneforge.evaluation.classifier import evaluate_classifier
from tuneforge.evaluation.generations import Answerer, answerer
from tuneforge.evaluation.language import evaluate_language_model
from tuneforge.evaluation.model_card import write_model_card
from tuneforge.evaluation.policy import evaluate_policy
from tuneforge.evaluation.preference import evaluate_preference
from tuneforge.evaluation.report import write_report
from tuneforge.evaluation.reward import evaluate_reward_model
from tuneforge.evaluation.scores import TUNED, EvalReport, chosen_metrics
from tuneforge.models import load_adapter, load_model, load_tokenizer, pick_device
from tuneforge.rundir import DATA_DIR, EVAL, MODEL_DIR, RUN_INFO, atomic_write_json, read_jsonl, require
from tuneforge.train.methods import METHODS
from tuneforge.train.tasks import TASKS, TaskContext, head_labels

Evaluator = Callable[[RunConfig, dict[str, Any], list[dict[str, Any]], Any, Answerer], EvalReport]
EVALUATORS: dict[str, Evaluator] = {
    "classify": evaluate_classifier,
    "dpo": evaluate_preference,
    "kto": evaluate_preference,
    "orpo": evaluate_preference,
    "reward": evaluate_reward_model,
    "grpo": evaluate_policy,
    "best_of_n": evaluate_policy,
}  # else language


def evaluate(cfg: RunConfig, log: Any = print) -> EvalReport:
    """Score the tuned model (and the base model) of a run on its held-out split, as its task is scored."""
    run_dir = cfg.run_dir
    split_path = require(run_dir, f"{DATA_DIR}/{cfg.evaluate.split}.jsonl", "prepare")
    model_dir = require(run_dir, MODEL_DIR, "train")
    rows = read_jsonl(split_path)[: cfg.evaluate.limit]
    if not rows:
        raise RunError(f"{split_path} holds no examples", f"prepare the data with data.{cfg.evaluate.split}_size > 0")
    chosen_metrics(cfg)  # an unknown or unloadable metric, or a missing model to compare, fails before any loads
    compared_folders(cfg)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)
    models, folders = _models(cfg, model_dir)
    start = time.perf_counter()
    answer = answerer(cfg, tokenizer, folders, log)
    report = EVALUATORS.get(cfg.train.task, evaluate_language_model)(cfg, models, rows, tokenizer, answer)
    report.seconds = time.perf_counter() - start
    atomic_write_json(run_dir / EVAL, report.to_json())
    report.page = write_report(run_dir)
    write_model_card(run_dir)
    return report


def compared_folders(cfg: RunConfig) -> dict[str, Path]:
    """The model folders evaluate.compare names (a run directory means its model/), under unique variant names."""
    if cfg.evaluate.compare and cfg.train.task in ("dpo", "kto", "orpo", "reward"):
        raise ConfigError(
            f"evaluate.compare scores answers or class probabilities; train.task={cfg.train.task} is scored by its "
            "own measures",
            "remove evaluate.compare, or evaluate each run on its own",
        )
    folders: dict[str, Path] = {}
    for named in cfg.evaluate.compare:
        path = Path(named)
        folder = path / MODEL_DIR if (path / MODEL_DIR).is_dir() else path
        if not ((folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()):
            raise RunError(
                f"evaluate.compare names {named}, which holds no trained model (no adapter_config.json or config.json)",
                "name a run directory with a trained model (runs/<name>) or a model folder",
            )
        if cfg.train.task == "classify":
            _check_classifier(cfg, named, folder)
        name = folder.parent.name if folder.name == MODEL_DIR else folder.name
        while name in ("base", TUNED, "majority") or name in folders:
            name += "+"
        folders[name] = folder
    return folders


def _check_classifier(cfg: RunConfig, named: str, folder: Path) -> None:
    """A model compared with a classifier must be one with the same classes in the same order (a head of another
    size fails to load anyway; one of the same size with other classes would be scored silently wrong)."""
    try:
        info = json.loads((folder / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    config = folder / "config.json"
    labels = info.get("labels")
    if labels is None and config.is_file():  # a whole model: its config names the classes
        id2label = json.loads(config.read_text(encoding="utf-8")).get("id2label") or {}
        labels = [id2label[k] for k in sorted(id2label, key=int)] if info.get("task") == "classify" else None
    if info.get("task", "classify") != "classify":
        raise RunError(
            f"evaluate.compare names {named}, a train.task={info['task']} model; a classifier is compared only with "
            f"classifiers",
            "name classifier runs of the same classes",
        )
    ours = class_labels(cfg.data, cfg.run_dir)
    if labels is not None and labels != ours:
        raise RunError(
            f"evaluate.compare names {named}, a classifier of the classes {labels}; this run's are {ours}",
            "name classifier runs trained on the same classes (data.labels fixes their order)",
        )


def _models(cfg: RunConfig, model_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The model behind each variant and the folder of its trained weights: one base model with the adapters
    switched on and off, or (after full or freeze training) the base model and the saved whole model; then every
    model of evaluate.compare. A classifier has no base variant (no head)."""
    device = pick_device()
    task = TASKS[cfg.train.task]
    labels = head_labels(TaskContext.of(cfg))
    compare = cfg.evaluate.compare_base and labels is None
    folders = {TUNED: model_dir, **compared_folders(cfg)}
    models: dict[str, Any] = {}
    shared = None  # the base model that carries the adapters
    method = METHODS[cfg.train.method]  # qlora: the adapters are scored on the 4-bit base they were trained on
    options = method.load_options(device) if method.load_options else None
    for name, folder in folders.items():
        if (folder / "adapter_config.json").is_file():
            if shared is None:
                shared = load_model(cfg.model.name, cfg.model.revision, device=device, labels=labels, options=options)
            shared = load_adapter(shared, folder, name).eval()
            models[name] = shared
        else:
            models[name] = load_model(str(folder), device=device, head=task.head).eval()
    if compare:
        base = shared if shared is not None else load_model(cfg.model.name, cfg.model.revision, device=device)
        models = {"base": base.eval(), **models}
    return models, folders
