"""Data-parallel training for real: two CPU processes (torchrun, gloo) match one process with the same batch."""

import json
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


def test_two_processes_train_like_one_with_the_same_global_batch(tiny_config) -> None:
    single = tiny_config(*COMMON, "train.batch_size=8", "name=single")
    prepare(single)
    alone = train(single, log=lambda *a: None)

    pair = tiny_config(*COMMON, "train.batch_size=4", "name=pair")  # 4 per process x 2 processes = 8
    prepare(pair)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    command += ["-m", "tuneforge", "train", str(pair.run_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data parallel: 2 processes, 4 examples per process" in done.stdout

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


def test_the_shipped_accelerate_config_is_one_accelerate_reads() -> None:
    from pathlib import Path

    from accelerate.commands.config.config_args import ClusterConfig

    path = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "ddp-gpus.yaml"
    config = ClusterConfig.from_yaml_file(path)
    assert str(config.distributed_type).endswith("MULTI_GPU") and config.num_processes == 2 and not config.use_cpu
