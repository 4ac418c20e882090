"""One fine-tuning job, run in a process of its own (`python -m tuneforge.jobs.worker DATA_DIR JOB_ID`) by the same
functions as the CLI: the job's OpenAI settings become a run config, then `prepare` and `train` run in
DATA_DIR/runs/<job id>, then (unless the job's `tuneforge.evaluate` is false) `evaluate` scores base and tuned model on
the held-out split and writes the run's report.html. Stages and the train stage's notes (memory check, batch size)
become events, every logged step a metrics event, every saved checkpoint a checkpoint record; a job that finds
checkpoints of an earlier attempt (its server was killed) resumes from the newest.

The runner (runner.py) claims the job, heartbeats for it and ends this process on cancel; this process ends itself
when the runner's process is gone, so a killed server leaves no training behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, load_config
from tuneforge.data import prepare
from tuneforge.errors import DataError, TuneforgeError
from tuneforge.evaluation import evaluate
from tuneforge.jobs.db import Database, open_database
from tuneforge.jobs.errors import ConflictError
from tuneforge.jobs.files import RUNS_DIR, FileStore, database_url
from tuneforge.jobs.lifecycle import set_status, update_job
from tuneforge.jobs.records import Job, JobError, check_options
from tuneforge.jobs.store import add_checkpoint, append_event, get_file, get_job, list_events
from tuneforge.rundir import CHECKPOINTS, METRICS, TUNED
from tuneforge.train import train

ORG = "tuneforge"  # the organisation part of fine-tuned model names: ft:<base>:<org>:<suffix>:<job id>
POLL_S = 1.0  # how often training's metrics.jsonl is read for new steps


def model_name(job: Job) -> str:
    """The fine-tuned model's name, as OpenAI forms it."""
    return f"ft:{job.model}:{ORG}:{job.suffix or ''}:{job.id}"


def job_config(job: Job, data_dir: Path, db: Database) -> RunConfig:
    """The run config of a job: its hyperparameters and tuneforge's own options (the job's `tuneforge` extension:
    checked train/data/clean/privacy/evaluate fields), then what no option may change: its name, folder, model and
    files. Values travel as JSON, so none is read as YAML syntax."""
    store = FileStore(data_dir, db, job.model)
    options = job.tuneforge.get("config") or {}
    check_options(options)  # the route refused bad ones already; a job row from elsewhere is held to the same rule
    fixed = {
        "name": job.id,
        "output_dir": str(data_dir / RUNS_DIR),
        "model.name": job.model,
        "data.path": str(store.path(get_file(db, job.training_file))),
        "train.seed": job.seed,
        "data.estimate": False,
        "evaluate.forgetting": False,
    }
    if job.validation_file:
        fixed["data.test_path"] = str(store.path(get_file(db, job.validation_file)))
    given = {**hyperparameter_options(job), **options, **fixed}
    return load_config(None, [f"{key}={json.dumps(value)}" for key, value in given.items()])


def hyperparameter_options(job: Job) -> dict[str, Any]:
    """OpenAI's hyperparameters ("auto" or numbers) as config options; DPO's method as train.task=dpo."""
    method = job.method or {"type": "supervised"}
    kind = method.get("type", "supervised")
    given = dict(job.hyperparameters or {})
    given.update((method.get(kind) or {}).get("hyperparameters") or {})
    out: dict[str, Any] = {"train.task": "dpo"} if kind == "dpo" else {}
    if given.get("n_epochs", "auto") != "auto":
        out["train.epochs"] = given["n_epochs"]
    if given.get("batch_size", "auto") != "auto":
        out["train.batch_size"] = given["batch_size"]
    if given.get("learning_rate_multiplier", "auto") != "auto":
        out["train.learning_rate"] = 2e-4 * float(given["learning_rate_multiplier"])  # 1.0 = LoRA's 2e-4
    if kind == "dpo" and given.get("beta", "auto") != "auto":
        out["train.dpo_beta"] = given["beta"]
    return out


class _Follow:
    """A thread that turns training's new metrics.jsonl steps into metrics events and estimated_finish. It follows
    by step number (a resumed run re-logs steps after its checkpoint; those events exist) and reads the file
    tolerantly (a killed run can leave half a line)."""

    def __init__(self, db: Database, job: Job, cfg: RunConfig) -> None:
        self.db, self.job, self.path, self.cfg = db, job, cfg.run_dir / METRICS, cfg
        self.last, self.stop = _last_step(db, job.id), threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(POLL_S):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001  # progress events are not worth the training
                print(f"metrics events: {exc!r}", file=sys.stderr)

    def flush(self) -> None:
        for row in _steps(self.path):
            if row["step"] <= self.last:
                continue
            data = {"step": row["step"], "train_loss": row.get("loss"), "learning_rate": row.get("lr")}
            data |= {k: v for k, v in row.items() if k.startswith("val_")}
            message = f"Step {row['step']}: training loss={row.get('loss')}"
            append_event(self.db, self.job.id, message, type="metrics", data=data)
            self.last = row["step"]
            self._estimate(row)

    def _estimate(self, row: dict[str, Any]) -> None:
        """estimated_finish from the share done so far: steps of the run's planned total (whatever "auto" settled
        on), or, in a metrics file written before rows carried it, of train.max_steps or epochs of train.epochs."""
        train, elapsed = self.cfg.train, row.get("elapsed_s")
        if isinstance(row.get("total_steps"), int) and row["total_steps"] > 0:
            done = row["step"] / row["total_steps"]
        elif train.max_steps:
            done = row["step"] / train.max_steps
        elif isinstance(train.epochs, int | float) and isinstance(row.get("epoch"), int | float):
            done = row["epoch"] / train.epochs
        else:
            return  # epochs "auto": the share is not known here
        if isinstance(elapsed, int | float) and done > 0:
            left = elapsed / done * max(1 - done, 0)
            update_job(self.db, self.job.id, estimated_finish=int(time.time() + left))


def _steps(path: Path) -> list[dict[str, Any]]:
    """The step rows of metrics.jsonl, skipping a line that is not (yet, or no longer) whole JSON."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _last_step(db: Database, job_id: str) -> int:
    """The last step a metrics event was written for (0: none), so a resumed worker goes on from there."""
    events = list_events(db, job_id, limit=1000).data  # newest first
    return next((int(e.data["step"]) for e in events if e.type == "metrics" and e.data and "step" in e.data), 0)


def _watch_parent() -> None:
    """End this process when the runner's process is gone: a restarted server resumes the job, and two trainings
    must never write one run directory."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def run(data_dir: Path, job_id: str) -> None:
    """Run the job to its end: succeeded with its model, checkpoints and results file; or failed with the reason."""
    _watch_parent()
    db = open_database(database_url(data_dir))  # the runner passes a PostgreSQL URL in the environment
    job = get_job(db, job_id)
    try:
        cfg = job_config(job, data_dir, db)
        append_event(db, job.id, "Validating training file")
        prepared = prepare(cfg)
        append_event(db, job.id, f"Files validated: {prepared.counts.get('train', 0)} training examples")
        resume = (cfg.run_dir / CHECKPOINTS).is_dir() and any((cfg.run_dir / CHECKPOINTS).glob("step-*"))
        started = "Fine-tuning job resumed from its last checkpoint" if resume else "Fine-tuning job started"
        append_event(db, job.id, started)
        note = _notes(db, job.id, data_dir)
        follow = _Follow(db, job, cfg)
        try:
            result = train(cfg, log=note, resume=resume)
        finally:
            follow.stop.set()
            follow.thread.join()
            follow.flush()
        if (job.tuneforge or {}).get("evaluate", True):
            _evaluate(db, job, cfg, note)
        _finish(db, job, cfg, result.tokens, data_dir)
    except TuneforgeError as exc:
        code = "invalid_training_file" if isinstance(exc, DataError) else "training_failed"
        set_status(db, job.id, "failed", JobError(code, str(exc)))
        append_event(db, job.id, f"Fine-tuning job failed: {exc}", level="error")


def _notes(db: Database, job_id: str, data_dir: Path) -> Any:
    """A stage's `log`: each line it writes becomes an info event (data directory paths shortened to <data>)."""

    def note(*parts: Any) -> None:
        text = " ".join(str(p) for p in parts).replace(str(data_dir), "<data>").strip()
        if text:
            append_event(db, job_id, text)

    return note


def _evaluate(db: Database, job: Job, cfg: RunConfig, note: Any) -> None:
    """Score base and tuned model on the held-out split and write report.html, as `tuneforge evaluate` does. The
    model is trained and fine whatever evaluation finds: an evaluation that fails is a warning, not a failed job."""
    update_job(db, job.id, estimated_finish=None)  # training's estimate is spent; evaluation's is not measured
    append_event(db, job.id, f"Evaluating base and tuned model on the {cfg.evaluate.split} split")
    try:
        report = evaluate(cfg, log=note)
    except TuneforgeError as exc:
        append_event(db, job.id, f"Evaluation failed, the model is kept: {exc}", level="warn")
        return
    scores = {k: v for k, v in report.scores.get(TUNED, {}).items() if isinstance(v, int | float)}
    base = report.scores.get("base", {})
    shown = ", ".join(
        f"{k}={v:.4g}" + (f" (base {base[k]:.4g})" if isinstance(base.get(k), int | float) else "")
        for k, v in [(k, v) for k, v in scores.items() if not k.startswith("val_")][:6]  # the held-out split's
    )
    append_event(
        db, job.id, f"Evaluation of {report.n} held-out examples in {report.seconds:.0f}s: {shown or 'see the report'}",
        data={"report": f"/v1/fine_tuning/jobs/{job.id}/report", "tuned": scores},
    )  # fmt: skip


def _finish(db: Database, job: Job, cfg: RunConfig, tokens: int, data_dir: Path) -> None:
    """Record checkpoints and the results file and name the model (the runner serves it, then marks the job
    succeeded)."""
    name = model_name(job)
    rows = {r["step"]: r for r in _steps(cfg.run_dir / METRICS)}
    for folder in sorted((cfg.run_dir / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(folder.name.split("-")[1])
        metrics = {"step": step, "train_loss": rows.get(step, {}).get("loss")}
        with contextlib.suppress(ConflictError):  # recorded by an attempt that was killed while finishing
            add_checkpoint(db, job.id, step, metrics, f"{name}:ckpt-step-{step}", str(folder.relative_to(data_dir)))
    results = FileStore(data_dir, db, job.model).save("step_metrics.csv", "fine-tune-results", [_results_csv(rows)])
    update_job(
        db, job.id, fine_tuned_model=name, trained_tokens=tokens, result_files=[results.id],
        run_dir=str(cfg.run_dir.relative_to(data_dir)),
    )  # fmt: skip
    append_event(db, job.id, "Loading the fine-tuned model for serving")


def _results_csv(rows: dict[int, dict[str, Any]]) -> bytes:
    """OpenAI's results file: one row per step (step, train_loss, train_accuracy, valid_loss, ...)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
    for step in sorted(rows):
        writer.writerow([step, rows[step].get("loss"), "", rows[step].get("val_loss", ""), ""])
    return out.getvalue().encode()


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2])
