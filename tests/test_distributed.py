"""Data-parallel training for real: two CPU processes (torchrun, gloo) match one process with the same batch."""

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from tuneforge.data import prepare
from tuneforge.train import train

COMMON = ["train.epochs=2", "train.threads=1", "data.estimate=false", "train.save_steps=4"]


@pytest.fixture(autouse=True)
def _threads_restored():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rows(cfg) -> list[dict]:
    return [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]


def _torchrun(run_dir, *args: str) -> subprocess.CompletedProcess:
    """`tuneforge train` in two CPU processes (gloo)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    command += ["-m", "tuneforge", "train", str(run_dir), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_two_processes_train_like_one_with_the_same_global_batch(tiny_config, sharding: str) -> None:
    single = tiny_config(*COMMON, "train.batch_size=8", "name=single")
    prepare(single)
    alone = train(single, log=lambda *a: None)

    # 4 per process x 2 processes = 8
    pair = tiny_config(*COMMON, "train.batch_size=4", "name=pair", f"train.sharding={sharding}")
    prepare(pair)
    done = _torchrun(pair.run_dir)
    assert "data parallel: 2 processes, 4 examples per process" in done.stdout
    assert ("sharded (FSDP2)" in done.stdout) == (sharding == "fsdp")

    one, two = _rows(single), _rows(pair)
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, alone.steps + 1))
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=2e-4, abs=1e-5)
    vals_one = [(r["step"], r["val_loss"]) for r in one if "val_loss" in r]
    vals_two = [(r["step"], r["val_loss"]) for r in two if "val_loss" in r]
    assert [s for s, _ in vals_two] == [s for s, _ in vals_one] and vals_one
    assert [v for _, v in vals_two] == pytest.approx([v for _, v in vals_one], rel=2e-4, abs=1e-5)
    assert all(r["epoch"] == o["epoch"] for r, o in zip(two, one, strict=True))  # every example once per epoch
    assert (pair.run_dir / "model" / "adapter_model.safetensors").is_file()  # written once, by the main process
    assert sorted(p.name for p in (pair.run_dir / "checkpoints").iterdir()) == sorted(
        p.name for p in (single.run_dir / "checkpoints").iterdir()
    )


@pytest.mark.parametrize(("name", "kind"), [("ddp-gpus.yaml", "MULTI_GPU"), ("fsdp-gpus.yaml", "FSDP")])
def test_the_shipped_accelerate_configs_are_ones_accelerate_reads(name: str, kind: str) -> None:
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(Path(__file__).resolve().parents[1] / "configs" / "accelerate" / name)
    assert str(config.distributed_type).endswith(kind) and config.num_processes == 2 and not config.use_cpu
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2


def test_a_sharded_run_resumes_from_its_checkpoint(tiny_config) -> None:
    """FSDP2 checkpoints hold the gathered weights and optimizer state: resuming from an early one repeats the
    later steps exactly as the uninterrupted sharded run made them."""
    cfg = tiny_config(*COMMON, "train.batch_size=4", "name=sharded", "train.sharding=fsdp")
    prepare(cfg)
    _torchrun(cfg.run_dir)
    whole = _rows(cfg)
    steps = sorted(int(p.name[5:]) for p in (cfg.run_dir / "checkpoints").iterdir())
    assert steps == [4, 8]
    shutil.rmtree(cfg.run_dir / "checkpoints" / "step-8")  # as if killed before step 8 was saved
    done = _torchrun(cfg.run_dir, "--resume")
    assert "resuming from" in done.stdout and "step 4 of" in done.stdout
    again = _rows(cfg)
    assert [r["step"] for r in again] == [r["step"] for r in whole]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in whole], rel=1e-5, abs=1e-6)
