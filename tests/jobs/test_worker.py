"""The job worker's bookkeeping, without training: metrics events and estimated_finish from training's metrics.jsonl."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tuneforge.config import load_config
from tuneforge.jobs import store
from tuneforge.jobs.db import open_database
from tuneforge.jobs.worker import _Follow


def test_metrics_events_and_the_estimate_follow_the_planned_steps_whatever_auto_chose(tmp_path: Path) -> None:
    db = open_database(str(tmp_path / "jobs.sqlite"))
    upload = store.create_file(db, "train.jsonl", "fine-tune", 1, "files/train.jsonl", "0" * 64)
    job = store.create_job(db, "tiny", upload.id)
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=run", "train.epochs=auto"])
    cfg.run_dir.mkdir(parents=True)
    rows = [{"step": s, "total_steps": 40, "epoch": s / 20, "loss": 1 / s, "lr": 1e-3, "elapsed_s": 2.0 * s}
            for s in (1, 2, 10)]  # fmt: skip
    (cfg.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 11, "lo')
    follow = _Follow(db, job, cfg)
    follow.stop.set()
    follow.thread.join()
    follow.flush()
    follow.flush()  # a second read adds nothing: events follow the step number
    events = [e for e in store.list_events(db, job.id, limit=100).data if e.type == "metrics"]
    assert [e.data["step"] for e in reversed(events)] == [1, 2, 10]  # the half-written line 11 is not read yet
    assert events[0].data["train_loss"] == 0.1
    left = store.get_job(db, job.id).estimated_finish - time.time()
    assert 55 <= left <= 61  # 10 of 40 steps took 20 s: 60 s to go
