"""What the approaches need before they can answer: the prepared splits, the index, the fine-tuned models (trained
when missing), and the models loaded once. A missing ingredient skips its approaches with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.compare.raft import raft_model_dir, read_raft_record, write_raft_splits
from tuneforge.config import RagConfig, RunConfig
from tuneforge.data import prepare
from tuneforge.models import load_adapter, load_model, pick_device
from tuneforge.rag import Index, Source, build_index, retrieve_sources
from tuneforge.rag.stores import is_index
from tuneforge.rundir import METRICS, MODEL_DIR, read_jsonl, split_path
from tuneforge.train import train
from tuneforge.train.methods import METHODS


class IndexRetriever:
    """The RAG stage's retrieval over an index, as `tuneforge ask` and the server do it (rag.* settings)."""

    def __init__(self, index: Index, rag: RagConfig) -> None:
        self.index, self.rag = index, rag

    def search(self, question: str, k: int) -> tuple[list[Source], str]:
        return retrieve_sources(question, self.index, self.rag.model_copy(update={"top_k": k}))


@dataclass
class Ingredients:
    """The approaches' shared inputs and what was skipped (approach -> why)."""

    skipped: dict[str, str] = field(default_factory=dict)
    retriever: Any = None
    index: dict[str, Any] | None = None  # what the index holds and what building it cost here
    folders: dict[str, Path] = field(default_factory=dict)  # "finetune" / "raft" -> trained model folder
    raft: dict[str, int] | None = None


def ensure_splits(cfg: RunConfig, log: Any) -> None:
    """Prepare the data unless the run's splits exist (prepared splits are reused: `tuneforge prepare` redoes them)."""
    if split_path(cfg.run_dir, cfg.evaluate.split).is_file():
        log(f"using the prepared splits in {cfg.run_dir / 'data'} (run `tuneforge prepare` to redo them)")
        return
    result = prepare(cfg)
    log(result.text())


def open_retrieval(cfg: RunConfig, parts: Ingredients, log: Any) -> None:
    """Bring the index up to date with rag.sources (only changed files are embedded again) and open it; or skip
    the retrieving approaches with the reason."""
    wants = {"rag", "finetune+rag"} & set(cfg.compare.approaches)
    if not wants or parts.retriever is not None:
        return
    seconds = None
    if cfg.rag.sources:
        summary = build_index(cfg.rag, cfg.index_dir, log=log)
        log(summary.text())
        # what building the index cost, when this run built it whole (an update's seconds are not that)
        seconds = summary.seconds if summary.added and not (summary.unchanged or summary.changed) else None
    elif not is_index(cfg.index_dir):
        for name in [a for a in cfg.compare.approaches if a in wants]:
            parts.skipped[name] = (
                f"no index: list the documents in rag.sources (or build {cfg.index_dir} with `tuneforge index`)"
            )
        return
    index = Index(cfg.index_dir)
    stats = index.store.stats()
    parts.index = {"folder": str(cfg.index_dir), "model": index.model, "seconds": seconds, **stats}
    parts.retriever = IndexRetriever(index, cfg.rag)
    parts.retriever.search("warm-up", 1)  # loads the embedding model: not the first question's latency


def fine_tuned(cfg: RunConfig, parts: Ingredients, log: Any) -> None:
    """The `finetune` model: compare.finetune_run's, or this run's (trained now when missing and compare.train)."""
    if "finetune" not in cfg.compare.approaches:
        return
    if cfg.compare.finetune_run is not None:  # checked before anything ran (bakeoff._check)
        parts.folders["finetune"] = trained_folder(Path(cfg.compare.finetune_run)) or Path(cfg.compare.finetune_run)
        return
    folder = cfg.run_dir / MODEL_DIR
    if folder.is_dir():
        log(f"finetune: using the trained model in {folder} (delete it to train again)")
        parts.folders["finetune"] = folder
    elif _no_training(cfg, "finetune", parts):
        return
    else:
        log("finetune: training the run's model (tuneforge train)")
        parts.folders["finetune"] = train(cfg, log=log).model_dir


def raft_tuned(cfg: RunConfig, parts: Ingredients, tokens: Any, log: Any) -> None:
    """The `finetune+rag` model: compare.raft_run's, or one trained RAFT-style in runs/<name>/compare/raft."""
    if "finetune+rag" not in cfg.compare.approaches or "finetune+rag" in parts.skipped:
        return
    if cfg.compare.raft_run is not None:  # checked before anything ran (bakeoff._check)
        parts.folders["raft"] = trained_folder(Path(cfg.compare.raft_run)) or Path(cfg.compare.raft_run)
        return
    folder = raft_model_dir(cfg)
    if folder.is_dir():
        parts.raft = read_raft_record(cfg, log)
        log(f"finetune+rag: using the trained model in {folder} (delete it to train again)")
        parts.folders["raft"] = folder
        return
    if _no_training(cfg, "finetune+rag", parts):
        return
    raft, stats = write_raft_splits(cfg, parts.retriever, tokens, log)
    parts.raft = stats.to_json()
    log(f"finetune+rag: training on prompts with retrieved passages in {raft.run_dir}")
    parts.folders["raft"] = train(raft, log=log).model_dir


def trained_folder(path: Path) -> Path | None:
    """The trained model of a run directory (its model/) or a model folder itself; None when there is none."""
    for folder in (path / MODEL_DIR, path):
        if (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
            return folder
    return None


def _no_training(cfg: RunConfig, approach: str, parts: Ingredients) -> bool:
    """Skip `approach` (True) when it would need training that is off or has no data."""
    train_split = split_path(cfg.run_dir, "train")
    if not train_split.is_file() or not train_split.stat().st_size:
        parts.skipped[approach] = "no training data: the train split is empty"
    elif not cfg.compare.train:
        parts.skipped[approach] = "no trained model and compare.train is false"
    return approach in parts.skipped


def training_cost(model_dir: Path) -> dict[str, Any]:
    """What training the model in `model_dir` took, from its run's metrics.jsonl: seconds, steps, tokens, examples."""
    run_dir = model_dir.parent
    rows = [r for r in read_jsonl(run_dir / METRICS) if isinstance(r.get("step"), int)] if (
        run_dir / METRICS).is_file() else []  # fmt: skip
    train_split = split_path(run_dir, "train")
    examples = len(read_jsonl(train_split)) if train_split.is_file() else None
    if not rows:
        return {"seconds": None, "examples": examples}
    last = rows[-1]
    seconds = float(last.get("elapsed_s", 0.0))
    return {
        "seconds": seconds,
        "steps": last["step"],
        "epochs": last.get("epoch"),
        "tokens": round(float(last.get("tokens_per_s", 0.0)) * seconds),
        "examples": examples,
    }


def load_models(cfg: RunConfig, folders: dict[str, Path]) -> dict[str, Any]:
    """The model behind each variant: the base model, carrying the tuned adapters (or whole tuned models beside)."""
    device = pick_device()
    method = METHODS[cfg.train.method]  # qlora: the adapters answer on the 4-bit base they were trained on
    options = method.load_options(device) if method.load_options else None
    shared = load_model(cfg.model.name, cfg.model.revision, device=device, options=options)
    models: dict[str, Any] = {}
    for name, folder in folders.items():
        if (folder / "adapter_config.json").is_file():
            shared = load_adapter(shared, folder, name)
            models[name] = shared
        else:
            models[name] = load_model(str(folder), device=device).eval()
    models["base"] = shared
    return {name: model.eval() for name, model in models.items()}
