"""What the commands share and build from their options: how user errors print, the index an `ask` reads, the
retrieval service, the serving app with its files and jobs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from tuneforge.config import EMBEDDED_MODEL, RunConfig, ServeConfig, load_config
from tuneforge.errors import RetrievalError, RunError, TuneforgeError
from tuneforge.rundir import CONFIG_FILE, MODEL_DIR, load_run


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print tuneforge errors without a traceback and exit with code 2 (130 on Ctrl-C)."""
    try:
        yield
    except TuneforgeError as exc:
        typer.echo(f"error: {exc}", err=True)  # plain and unwrapped: paths and commands stay copyable
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        # Every artifact is written atomically, so what was finished before Ctrl-C is intact.
        typer.echo("\ninterrupted; finished artifacts in the run directory are intact", err=True)
        raise typer.Exit(130) from None


def resolve_target(target: str, overrides: list[str] | None) -> RunConfig:
    """Config of a YAML file or of an existing run directory, with overrides applied."""
    path = Path(target)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return load_run(path, overrides)
    return load_config(path, overrides)


def rag_target(target: str, overrides: list[str]) -> tuple[Path, Any, str]:
    """(index folder, rag settings with the overrides, answering model) of an index folder, a config or a run."""
    from tuneforge.rag.stores import is_index

    if is_index(Path(target)):
        return Path(target), load_config(None, overrides).rag, EMBEDDED_MODEL
    if not Path(target).is_file() and not (Path(target) / CONFIG_FILE).is_file():
        raise RetrievalError(
            f"no index at {target}", "pass an index folder, or the config it was built from (tuneforge index CONFIG)"
        )
    cfg = resolve_target(target, overrides)
    return cfg.index_dir, cfg.rag, cfg.model.name


INDEX_HELP = "Retrieve from this index (made by tuneforge index) [default: the run's own index, if it has one]."


def retrieval_service(index_dir: Path | None, cfg: RunConfig) -> Any:
    """The retrieval service of an --index folder, or of the run's own index when it has one (else None)."""
    from tuneforge.rag.stores import is_index
    from tuneforge.serve.retrieval import RetrievalService

    folder = index_dir or cfg.index_dir
    if index_dir is None and not is_index(folder):
        return None
    return RetrievalService.open(folder, cfg.rag)


def serving_app(
    run_dirs: list[Path],
    cfg: RunConfig,
    key: str | None,
    retrieval: Any,
    data_dir: Path | None,
    database: str | None,
    gguf: Path | None = None,
    annotate: tuple[Path, Path] | None = None,
) -> Any:
    """The app of `tuneforge serve`: the runs' adapters (or cfg's model alone, or a GGUF export through llama.cpp),
    retrieval, files and jobs; reward models beside them, and with `annotate` (prompts, preference file) the
    annotation page's session, sampling from the first served model."""
    from tuneforge.serve.feedback import RewardService, is_reward_model

    rewards = [d for d in run_dirs if is_reward_model(d)]
    app = _serving_app([d for d in run_dirs if d not in rewards], cfg, key, retrieval, data_dir, database, gguf)
    app.state.rewards = RewardService(rewards) if rewards else None
    if annotate is not None:
        app.state.annotation = annotation_service(app.state.engine, *annotate)
    return app


def annotation_service(engine: Any, prompts: Path, out: Path) -> Any:
    """The web UI's annotation session: two answers per prompt sampled (temperature 0.8) from the engine's default
    model, judgements appended to `out`."""
    from tuneforge.feedback import Annotation
    from tuneforge.serve.feedback import AnnotationService, engine_sampler

    model_id = engine.default_id
    sampler = engine_sampler(engine, model_id, 0.8, 256)
    return AnnotationService(Annotation(prompts, out, sampler, model_id, {"temperature": 0.8, "max_new_tokens": 256}))


def _serving_app(
    run_dirs: list[Path],
    cfg: RunConfig,
    key: str | None,
    retrieval: Any,
    data_dir: Path | None,
    database: str | None,
    gguf: Path | None,
) -> Any:
    from tuneforge.jobs.files import open_file_store
    from tuneforge.serve import create_app
    from tuneforge.serve.engine import Engine

    if gguf is not None:
        if run_dirs or data_dir:
            raise RunError(
                "--gguf serves one exported file through llama.cpp, without runs or fine-tuning jobs",
                "serve runs and jobs in another `tuneforge serve` (the jobs' adapters need tuneforge's engine)",
            )
        from tuneforge.serve.llama_cpp_engine import LlamaCppEngine

        return create_app([], cfg.serve, api_key=key, engine=LlamaCppEngine(gguf), retrieval=retrieval)
    from tuneforge.serve.classifiers import ClassifierEngine, is_classifier
    from tuneforge.serve.combined import CombinedEngine, is_whole_model, load_whole_models

    classify = [d for d in run_dirs if is_classifier(d)]
    whole = [d for d in run_dirs if d not in classify and is_whole_model(d)]
    adapters = [d for d in run_dirs if d not in classify and d not in whole]
    files = open_file_store(data_dir, cfg.model.name, database) if data_dir else None
    if not classify and not whole:  # adapters of one base model (the app loads them), or the base model alone
        base = None if adapters else Engine([], cfg.serve.max_batch, base=cfg.model.name)
        return create_app(adapters, cfg.serve, api_key=key, engine=base, retrieval=retrieval, files=files)
    whole_engines = load_whole_models(whole, cfg.serve.max_batch) if whole else {}
    classifiers = ClassifierEngine(classify) if classify else None
    if adapters:
        chat: Any = Engine(adapters, cfg.serve.max_batch)
    else:  # jobs train adapters of cfg's base model: serve it
        chat = Engine([], cfg.serve.max_batch, base=cfg.model.name) if data_dir else None
    engine = CombinedEngine(chat, classifiers, whole_engines)
    return create_app(
        [], cfg.serve, api_key=key, engine=engine, retrieval=retrieval, files=files, classifiers=classifiers
    )


def serve_settings(run_dirs: list[Path] | None, given: dict[str, Any]) -> RunConfig:
    """The config `tuneforge serve` runs with: the first run's (or the defaults), with the options given on the
    command line as overrides, validated by its rules (as JSON: a value stays a string)."""
    overrides = [
        f"{'' if '.' in name else 'serve.'}{name}={json.dumps(value)}"
        for name, value in given.items()
        if value is not None
    ]
    return load_run(run_dirs[0], overrides) if run_dirs else load_config(None, overrides)


def serve_help(name: str) -> str:
    return f"{ServeConfig.model_fields[name].description} [default: serve.{name} of the first run's config]"


def chat_engine(run_dir: Path) -> Any:
    """What `tuneforge chat` talks to: the run's adapter on its base model (one user: no batch to wait for), its whole
    fine-tuned model, or the classifier it trained (answers: the label and every class's probability)."""
    from tuneforge.serve.classifiers import ClassifierEngine, is_classifier
    from tuneforge.serve.combined import CombinedEngine, is_whole_model
    from tuneforge.serve.engine import Engine

    if is_classifier(run_dir):
        return CombinedEngine(None, ClassifierEngine([run_dir]))
    if is_whole_model(run_dir):  # full or freeze training: the saved model itself
        return Engine([], max_batch=1, base=str(run_dir / MODEL_DIR))
    return Engine([run_dir], max_batch=1)
