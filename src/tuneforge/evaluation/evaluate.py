"""The evaluate stage: base vs tuned on the same held-out split, saved to eval.json and predictions.jsonl."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, RunError
from tuneforge.evaluation.forgetting import forgetting_check
from tuneforge.evaluation.metrics import (
    DEFAULTS,
    LOSS_METRICS,
    METRICS,
    Metric,
    confusion,
    json_extraction,
    per_class,
    resolve,
)
from tuneforge.evaluation.report import write_report
from tuneforge.evaluation.stats import compare, interval, per_example_scores, resample_indices, resampled_scores
from tuneforge.generation import SamplingParams, generate_texts, use_adapter
from tuneforge.models import load_adapter, load_model, load_tokenizer, pick_device
from tuneforge.rundir import (
    EVAL,
    GENERATIONS,
    MODEL_DIR,
    PREDICTIONS,
    RUN_INFO,
    atomic_write_json,
    read_jsonl,
    require,
    write_jsonl,
)
from tuneforge.train.classify import class_labels
from tuneforge.train.tasks import TASKS

TUNED = "tuned"


@dataclass
class EvalReport:
    """Scores per model ('base', 'tuned') on one split, their 95% bootstrap intervals, the comparison of the
    tuned model with its baseline (base, or the majority class) and per-model details (per class, confusion)."""

    split: str
    n: int
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    intervals: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    comparison: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: str | None = None
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    resamples: int = 0
    forgetting: dict[str, Any] | None = None
    page: Path | None = None  # report.html
    # each example's own score per model and mean metric (for predictions.jsonl; not in eval.json)
    per_example: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"split": self.split, "n": self.n, "models": self.scores}
        if self.intervals:
            out["intervals"] = self.intervals
        if self.comparison:
            out["comparison"] = {
                "baseline": self.baseline,
                "model": TUNED,
                "resamples": self.resamples,
                "metrics": self.comparison,
            }
        if self.details:
            out["details"] = self.details
        if self.forgetting:
            out["forgetting"] = self.forgetting
        return {**out, "seconds": round(self.seconds, 2)}

    def score(
        self,
        metrics: dict[str, Metric],
        outputs: Mapping[str, Sequence[Any]],
        references: Sequence[Any],
        resamples: int,
    ) -> None:
        """Score every model's outputs with every metric, with bootstrap intervals (`resamples` > 0) on shared
        resamples, and compare the tuned model with the first model (its baseline)."""
        indices = resample_indices(len(references), resamples) if resamples and len(references) else None
        self.resamples = resamples if indices is not None else 0
        samples: dict[tuple[str, str], Any] = {}
        raw: dict[tuple[str, str], float] = {}
        for variant, predictions in outputs.items():
            scores = self.scores.setdefault(variant, {})
            for name, metric in metrics.items():
                raw[variant, name] = metric.score(predictions, references)
                scores[name] = round(raw[variant, name], 4)
                values = per_example_scores(metric, predictions, references)
                if values is not None:
                    self.per_example.setdefault(variant, {})[name] = values
                if indices is not None:
                    samples[variant, name] = resampled_scores(metric, predictions, references, indices, values)
                    low, high = interval(samples[variant, name])
                    self.intervals.setdefault(variant, {})[name] = [round(low, 4), round(high, 4)]
        baseline = next(iter(outputs))
        if indices is None or baseline == TUNED or TUNED not in outputs:
            return
        self.baseline = baseline
        for name in metrics:
            observed = raw[TUNED, name] - raw[baseline, name]
            self.comparison[name] = compare(samples[baseline, name], samples[TUNED, name], observed).to_json()


def evaluate(cfg: RunConfig, log: Any = print) -> EvalReport:
    """Score the tuned model (and the base model) of a run on its held-out split, as its task is scored."""
    run_dir = cfg.run_dir
    split_path = require(run_dir, f"data/{cfg.evaluate.split}.jsonl", "prepare")
    model_dir = require(run_dir, MODEL_DIR, "train")
    rows = read_jsonl(split_path)[: cfg.evaluate.limit]
    if not rows:
        raise RunError(f"{split_path} holds no examples", f"prepare the data with data.{cfg.evaluate.split}_size > 0")
    chosen_metrics(cfg)  # an unknown or unloadable metric, or a missing model to compare, fails before any loads
    compared_folders(cfg)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)
    models, folders = _models(cfg, model_dir)
    start = time.perf_counter()
    answer = _answerer(cfg, tokenizer, folders, log)
    report = EVALUATORS.get(cfg.train.task, _language_model)(cfg, models, rows, tokenizer, answer)
    report.seconds = time.perf_counter() - start
    atomic_write_json(run_dir / EVAL, report.to_json())
    report.page = write_report(run_dir)
    return report


def chosen_metrics(cfg: RunConfig) -> dict[str, Metric]:
    """The metrics evaluate.metrics names (default: those of evaluate.task, or of classification), checked against
    what the run's task produces (generated text, or class probabilities)."""
    task = TASKS[cfg.train.task]
    kind = "class" if task.head == "classifier" else "text"
    if cfg.train.task == "dpo" or (kind == "text" and not task.generative):
        if cfg.evaluate.metrics:
            raise ConfigError(
                f"train.task={cfg.train.task} is scored by its own measures (losses, preference accuracy), not by "
                f"evaluate.metrics",
                "remove evaluate.metrics",
            )
        return {}
    names = cfg.evaluate.metrics or DEFAULTS["class" if kind == "class" else cfg.evaluate.task]
    metrics = {name: resolve(name) for name in names}
    wrong = [name for name, metric in metrics.items() if metric.kind != kind]
    if wrong:
        fitting = ", ".join(n for n, m in METRICS.items() if m.kind == kind)
        what = "class probabilities" if kind == "class" else "generated text"
        raise ConfigError(
            f"evaluate.metrics {wrong} cannot score train.task={cfg.train.task}, which produces {what}",
            f"choose from {fitting}" + (" or your own module:function" if kind == "text" else ""),
        )
    return metrics


def _language_model(
    cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any, answer: Answerer
) -> EvalReport:
    """sft, pretrain, multitask: losses and perplexities (per task for multitask) and, for chat tasks, generated
    answers scored by evaluate.metrics, with bootstrap intervals and tuned-vs-base significance."""
    task = TASKS[cfg.train.task]
    generative = task.generative
    prompts, references = chat_prompts(rows) if generative else ([], [])
    loss_sets = _loss_sets(cfg, tokenizer)
    params = SamplingParams(
        max_new_tokens=cfg.evaluate.max_new_tokens,
        temperature=cfg.evaluate.temperature,
        top_p=cfg.evaluate.top_p,
        seed=cfg.train.seed if cfg.evaluate.temperature > 0 else None,
    )
    report = EvalReport(cfg.evaluate.split, len(rows))
    outputs: dict[str, list[str]] = {}
    losses: dict[str, dict[str, np.ndarray]] = {}  # split (or split_group) -> variant -> (summed loss, tokens) rows
    variants = list(models)
    pad_id = int(tokenizer.pad_token_id)
    for variant in variants:
        model = models[variant]
        with use_adapter(model, None if variant == "base" else variant, merge=True):
            for split, encoded in loss_sets.items():
                split_rows = example_losses(model, task, encoded, cfg.evaluate.batch_size, pad_id, _device(model))
                groups = np.array([task.group(e) if task.group else "" for e in encoded])
                for group in [""] + sorted(set(groups) - {""}):
                    name = f"{split}_{group}" if group else split
                    losses.setdefault(name, {})[variant] = split_rows[groups == group] if group else split_rows
            if generative:
                outputs[variant] = answer(variant, model, prompts, params)
    for name in sorted(losses, key=lambda n: (not n.startswith("val"), n)):  # val before the scored split
        per_split = {f"{name}_{measure}": metric for measure, metric in LOSS_METRICS.items()}
        rows_of = {variant: list(split_rows) for variant, split_rows in losses[name].items()}
        report.score(per_split, rows_of, [None] * len(next(iter(rows_of.values()))), cfg.evaluate.bootstrap)
    if generative:
        metrics = chosen_metrics(cfg)
        report.score(metrics, outputs, references, cfg.evaluate.bootstrap)
        if any(name.startswith(("json", "field")) for name in metrics):
            for variant in variants:
                per_field = json_extraction(outputs[variant], references)["field_accuracy"]
                report.details[variant] = {"field_accuracy": {k: round(v, 4) for k, v in per_field.items()}}
        write_jsonl(
            cfg.run_dir / PREDICTIONS,
            [
                {
                    "source": r.get("source"),
                    **({"task": r["task"]} if "task" in r else {}),
                    "reference": ref,
                    **{v: outputs[v][i] for v in variants},
                    "scores": {
                        v: {name: round(float(values[i]), 4) for name, values in report.per_example.get(v, {}).items()}
                        for v in variants
                    },
                }
                for i, (r, ref) in enumerate(zip(rows, references, strict=True))
            ],
        )
    report.forgetting = forgetting_check(cfg, models, tokenizer, answer)
    return report


@torch.no_grad()
def example_losses(model: Any, task: Any, examples: list[Any], batch_size: int, pad_id: int, device: str) -> np.ndarray:
    """(summed loss, loss tokens) of each example of a language-model task, in order: a split's loss is the ratio of
    their sums (what `group_losses` computes in batches), and resampling the rows gives its interval."""
    from tuneforge.train.lm import IGNORE_INDEX, token_logps

    was_training = model.training
    model.eval()
    rows: list[tuple[float, float]] = []
    for start in range(0, len(examples), batch_size):
        batch = task.collate(examples[start : start + batch_size], pad_id).to(device)
        tokens = (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
        rows += zip((-token_logps(model, batch)).tolist(), tokens.tolist(), strict=True)
    model.train(was_training)
    return np.array(rows, dtype=float).reshape(-1, 2)


def _classifier(
    cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any, answer: Answerer
) -> EvalReport:
    """classify: evaluate.metrics (default accuracy, F1, precision, recall, ECE) from the head's probabilities,
    beside always answering the most frequent training class (the base model has no trained head to compare
    with), per-class scores and the confusion matrix; probabilities go to predictions.jsonl."""
    from tuneforge.train.classify import probabilities

    labels = class_labels(cfg)
    examples = TASKS["classify"].load(cfg.run_dir / "data" / f"{cfg.evaluate.split}.jsonl", tokenizer, cfg)
    examples = examples[: len(rows)]
    truth = [e.label for e in examples]
    train_counts = Counter(str(r["label"]) for r in read_jsonl(cfg.run_dir / "data" / "train.jsonl"))
    majority = np.eye(len(labels))[[labels.index(max(labels, key=lambda label: train_counts[label]))] * len(truth)]
    outputs: dict[str, Any] = {"majority": list(majority)}
    pad_id = int(tokenizer.pad_token_id)
    for variant, model in models.items():  # the tuned model, then those of evaluate.compare
        with use_adapter(model, variant, merge=True):
            outputs[variant] = list(probabilities(model, examples, cfg.evaluate.batch_size, pad_id, _device(model)))
    compared = [v for v in models if v != TUNED]
    probs = np.array(outputs[TUNED])
    predicted = probs.argmax(1).tolist()
    report = EvalReport(cfg.evaluate.split, len(rows))
    report.score(chosen_metrics(cfg), outputs, truth, cfg.evaluate.bootstrap)
    for name, rows_of_probs in outputs.items():
        report.details[name] = {
            "per_class": per_class(rows_of_probs, truth, labels),
            "confusion_matrix": {"labels": labels, "rows": confusion(rows_of_probs, truth, len(labels))},
        }
    write_jsonl(
        cfg.run_dir / PREDICTIONS,
        [
            {
                "source": r.get("source"),
                "text": r["text"],
                "reference": labels[t],
                "prediction": labels[g],
                "probabilities": {label: round(float(p), 5) for label, p in zip(labels, row, strict=True)},
                **{v: labels[int(np.argmax(outputs[v][i]))] for v in compared},  # the compared models' answers
            }
            for i, (r, t, g, row) in enumerate(zip(rows, truth, predicted, probs, strict=True))
        ],
    )
    return report


def _preference(
    cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any, answer: Answerer
) -> EvalReport:
    """dpo: how often each model gives the chosen answer a higher log-probability per token than the rejected one
    (per token: a longer answer is not penalised for its length), the mean margin per token, and (tuned against
    base as the reference) the DPO loss and reward accuracy."""
    from tuneforge.train.dpo import answer_logps
    from tuneforge.train.lm import loss_tokens

    pairs = TASKS["dpo"].load(cfg.run_dir / "data" / f"{cfg.evaluate.split}.jsonl", tokenizer, cfg)[: len(rows)]
    pad_id = int(tokenizer.pad_token_id)
    logps: dict[str, np.ndarray] = {}
    for variant in [v for v in ("base", TUNED) if v in models]:
        model = models[variant]
        with use_adapter(model, None if variant == "base" else TUNED, merge=True):
            logps[variant] = np.array(answer_logps(model, pairs, cfg.evaluate.batch_size, pad_id, _device(model)))
    report = EvalReport(cfg.evaluate.split, len(rows))
    lengths = np.array([[max(loss_tokens(p.chosen), 1), max(loss_tokens(p.rejected), 1)] for p in pairs])
    margins = {
        variant: list(values[:, 0] / lengths[:, 0] - values[:, 1] / lengths[:, 1]) for variant, values in logps.items()
    }
    # Both measures are means over pairs of their per-token margin: intervals and the tuned-vs-base test come
    # from the same bootstrap as every other metric.
    report.score(PREFERENCE_METRICS, margins, [0.0] * len(pairs), cfg.evaluate.bootstrap)
    if "base" in logps:
        rewards = (logps[TUNED] - logps["base"]) * cfg.train.dpo_beta
        gap = rewards[:, 0] - rewards[:, 1]
        report.scores[TUNED]["reward_accuracy"] = round(float((gap > 0).mean()), 4)
        report.scores[TUNED]["dpo_loss"] = round(float(np.logaddexp(0, -gap).mean()), 4)
    report.forgetting = forgetting_check(cfg, models, tokenizer, answer)
    return report


def _won(margin: float, _: Any) -> float:
    return float(margin > 0)


def _margin(margin: float, _: Any) -> float:
    return float(margin)


PREFERENCE_METRICS = {
    "pair_accuracy": Metric("text", lambda m, r: float(np.mean([x > 0 for x in m])) if len(m) else 0.0, _won),
    "mean_margin": Metric("text", lambda m, r: float(np.mean(m)) if len(m) else 0.0, _margin),
}


EVALUATORS: dict[str, Callable[[RunConfig, dict[str, Any], list[dict[str, Any]], Any, Any], EvalReport]] = {
    "classify": _classifier,
    "dpo": _preference,
}


def _device(model: Any) -> str:
    return str(next(model.parameters()).device.type)


def compared_folders(cfg: RunConfig) -> dict[str, Path]:
    """The model folders evaluate.compare names (a run directory means its model/), under unique variant names."""
    if cfg.evaluate.compare and cfg.train.task == "dpo":
        raise ConfigError(
            "evaluate.compare scores answers or class probabilities; train.task=dpo is scored by its own measures",
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
    if labels is not None and labels != class_labels(cfg):
        raise RunError(
            f"evaluate.compare names {named}, a classifier of the classes {labels}; this run's are {class_labels(cfg)}",
            "name classifier runs trained on the same classes (data.labels fixes their order)",
        )


def _models(cfg: RunConfig, model_dir: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The model behind each variant and the folder of its trained weights: one base model with the adapters
    switched on and off, or (after full or freeze training) the base model and the saved whole model; then every
    model of evaluate.compare. A classifier has no base variant (no head)."""
    device = pick_device()
    task = TASKS[cfg.train.task]
    labels = class_labels(cfg) if task.head == "classifier" else None
    compare = cfg.evaluate.compare_base and labels is None
    folders = {TUNED: model_dir, **compared_folders(cfg)}
    models: dict[str, Any] = {}
    shared = None  # the base model that carries the adapters
    for name, folder in folders.items():
        if (folder / "adapter_config.json").is_file():
            if shared is None:
                shared = load_model(cfg.model.name, cfg.model.revision, device=device, labels=labels)
            shared = load_adapter(shared, folder, name).eval()
            models[name] = shared
        else:
            models[name] = load_model(str(folder), device=device, head=task.head).eval()
    if compare:
        base = shared if shared is not None else load_model(cfg.model.name, cfg.model.revision, device=device)
        models = {"base": base.eval(), **models}
    return models, folders


def _loss_sets(cfg: RunConfig, tokenizer: Any) -> dict[str, list[Any]]:
    """Encoded examples of the validation split (when there is one) and of the scored split, for their losses."""
    splits = dict.fromkeys(["val", cfg.evaluate.split])
    paths = {s: cfg.run_dir / "data" / f"{s}.jsonl" for s in splits}
    load = TASKS[cfg.train.task].load
    return {
        s: load(p, tokenizer, cfg)[: cfg.evaluate.limit] for s, p in paths.items() if p.is_file() and p.stat().st_size
    }


def chat_prompts(rows: list[dict[str, Any]]) -> tuple[list[list[dict[str, str]]], list[str]]:
    """Each chat record's conversation up to (not including) its last assistant answer, and that answer."""
    prompts, references = [], []
    for row in rows:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(messages[:last])
        references.append(messages[last]["content"])
    return prompts, references


class _Generations:
    """Answers generated by earlier evaluations (runs/<name>/generations.json), each under a key of everything
    that decides them: reused when the key matches, replaced when it does not."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.saved: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            self.saved = {}  # a damaged cache is only a cache: generate again

    def get(self, variant: str, key: str, n: int) -> list[str] | None:
        entry = self.saved.get(variant)
        if not isinstance(entry, dict) or entry.get("key") != key or len(entry.get("outputs", [])) != n:
            return None
        return [str(o) for o in entry["outputs"]]

    def put(self, variant: str, key: str, outputs: list[str]) -> None:
        self.saved[variant] = {"key": key, "outputs": outputs}
        atomic_write_json(self.path, self.saved)


Answerer = Callable[[str, Any, list[Any], SamplingParams], list[str]]


def _answerer(cfg: RunConfig, tokenizer: Any, folders: dict[str, Path], log: Any) -> Answerer:
    """answer(name, model, prompts, params): the model's answers, reused from generations.json when nothing that
    decides them changed (`name`: a variant, or probe-<variant>; `folders`: each variant's trained weights)."""
    cache = _Generations(cfg.run_dir / GENERATIONS)

    def answer(name: str, model: Any, prompts: list[Any], params: SamplingParams) -> list[str]:
        key = _generation_key(cfg, folders.get(name.removeprefix("probe-")), prompts, params)
        saved = cache.get(name, key, len(prompts))
        if saved is not None:
            log(f"{name}: reusing its {len(prompts)} saved answers (same model, prompts and settings)")
            return saved
        outputs = generate_texts(model, tokenizer, prompts, params, cfg.evaluate.batch_size, name)
        cache.put(name, key, outputs)
        return outputs

    return answer


def _generation_key(cfg: RunConfig, trained: Path | None, prompts: list[Any], params: SamplingParams) -> str:
    """A hash of what decides a variant's answers: the base model and the `trained` weights on it (their files'
    names, sizes and times), the prompts, the sampling settings and the batch size (padding changes greedy answers
    in the last decimals of the logits)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([cfg.model.name, cfg.model.revision, asdict(params), cfg.evaluate.batch_size]).encode())
    digest.update(json.dumps(prompts, sort_keys=True).encode())
    digest.update(str(trained.resolve() if trained else None).encode())
    for folder in [Path(cfg.model.name)] + ([trained] if trained else []):
        for file in sorted(folder.glob("*")) if folder.is_dir() else []:
            if file.is_file():
                stat = file.stat()
                digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def summary_columns(report: EvalReport) -> list[str]:
    """The columns of `summary_rows`: the models, then the tuned model's difference to its baseline."""
    columns = list(report.scores)
    return columns + ([f"{TUNED}-{report.baseline}"] if report.comparison else [])


def summary_rows(report: EvalReport) -> list[tuple[str, list[str]]]:
    """(metric, [value per model, difference]) rows for a side-by-side table: every score with its 95% interval,
    the tuned model's difference to its baseline (* when significant), then per-field and per-class details."""
    models = list(report.scores)
    rows = []
    for key, value in report.scores[models[-1]].items():
        if not isinstance(value, int | float):
            continue
        cells = [_fmt(report.scores[m].get(key), report.intervals.get(m, {}).get(key)) for m in models]
        if report.comparison:
            cells.append(_difference(report.comparison.get(key)))
        rows.append((key, cells))
    pad = [""] if report.comparison else []
    fields = report.details.get(models[-1], {}).get("field_accuracy", {})
    for name in fields:
        values = [_fmt(report.details.get(m, {}).get("field_accuracy", {}).get(name)) for m in models]
        rows.append((f"  {name}", values + pad))
    classes = report.details.get(models[-1], {}).get("per_class", {})
    for name in classes:
        values = [_fmt(report.details[m]["per_class"][name]["f1"]) for m in models]
        rows.append((f"  f1 {name} ({classes[name]['support']})", values + pad))
    return rows


def _fmt(value: Any, bounds: list[float] | None = None) -> str:
    """A score, with its 95% interval when it has one: 0.396 [0.25,0.54]."""
    if value is None:
        return "-"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return f"{text} [{bounds[0]:.2f},{bounds[1]:.2f}]" if bounds else text


def _difference(comparison: dict[str, Any] | None) -> str:
    """The difference, with * when it is significant (its interval and p-value are in eval.json)."""
    if comparison is None:
        return "-"
    return f"{comparison['delta']:+.3f}" + (" *" if comparison["significant"] else "")
