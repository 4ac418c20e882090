"""Resume: a training process killed with SIGKILL continues from its last checkpoint to the same final loss."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.data import prepare
from tuneforge.rundir import load_run
from tuneforge.train import train
from tuneforge.train.checkpoint import latest_checkpoint

SETTINGS = ["train.epochs=12", "train.batch_size=4", "train.save_steps=10", "train.threads=1", "data.estimate=false"]


@pytest.fixture(autouse=True)
def _threads_restored():
    """train.threads=1 (for identical sums in parent and child) must not slow the rest of the suite."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _kill_after_first_checkpoint(run_dir: Path) -> int:
    """Start `tuneforge train` in a child process and SIGKILL it as soon as a checkpoint is complete."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "train", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while latest_checkpoint(run_dir) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()


def test_a_killed_run_resumes_to_the_uninterrupted_final_loss(tiny_config) -> None:
    reference = tiny_config(*SETTINGS, "name=whole")
    prepare(reference)
    whole = train(reference)

    cfg = tiny_config(*SETTINGS, "name=killed")
    prepare(cfg)
    assert _kill_after_first_checkpoint(cfg.run_dir) == -signal.SIGKILL  # killed, not finished
    assert not (cfg.run_dir / "model").exists()
    stopped_at = int(latest_checkpoint(cfg.run_dir).name.split("-")[1])  # type: ignore[union-attr]
    assert 0 < stopped_at < whole.steps

    resumed = train(load_run(cfg.run_dir), resume=True)
    assert resumed.steps == whole.steps
    assert resumed.train_loss == pytest.approx(whole.train_loss, rel=1e-5, abs=1e-7)
    assert resumed.val_loss == pytest.approx(whole.val_loss, rel=1e-5)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, whole.steps + 1))  # every step once, none repeated
    reference_rows = [json.loads(line) for line in (reference.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference_rows], rel=1e-4, abs=1e-6)


def test_resume_without_a_checkpoint_says_what_to_do(tiny_config) -> None:
    cfg = tiny_config("data.estimate=false")
    prepare(cfg)
    result = CliRunner().invoke(app, ["train", "--resume", str(cfg.run_dir)])
    assert result.exit_code == 2
    assert "nothing to resume" in result.output and "train without --resume" in result.output
