"""Data-parallel training for real: two CPU processes (torchrun, gloo) match one process with the same batch."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

from tuneforge.data import prepare
from tuneforge.train import train

from helpers import ROOT

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
    return _run(command)


def _run(command: list[str], succeeds: bool = True) -> subprocess.CompletedProcess:
    """Run a launcher; on a timeout kill its whole process group (a hung worker must not outlive the test)."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"{command[2:6]} timed out after 300 s:\n{stderr[-3000:]}")
    assert (proc.returncode == 0) == succeeds, stderr[-3000:]
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


ENGINES = {"none": "a whole model in each", "fsdp": "sharded (FSDP2)", "zero2": "ZeRO stage 2", "zero3": "ZeRO stage 3"}


@pytest.mark.parametrize(
    ("sharding", "batch", "accum"), [("none", 4, 1), ("fsdp", 4, 1), ("zero2", 2, 2), ("zero3", 4, 1)]
)
def test_two_processes_train_like_one_with_the_same_global_batch(
    tiny_config, sharding: str, batch: int, accum: int
) -> None:
    single = tiny_config(*COMMON, "train.batch_size=8", "name=single")
    prepare(single)
    alone = train(single, log=lambda *a: None)

    # batch x accum per process x 2 processes = 8
    options = [f"train.batch_size={batch}", f"train.grad_accum={accum}", f"train.sharding={sharding}"]
    pair = tiny_config(*COMMON, *options, "name=pair")
    prepare(pair)
    done = _torchrun(pair.run_dir)
    assert f"data parallel: 2 processes, {batch} examples per process" in done.stdout
    assert ENGINES[sharding] in done.stdout

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


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ddp-gpus.yaml", "MULTI_GPU"),
        ("fsdp-gpus.yaml", "FSDP"),
        ("deepspeed-zero2-gpus.yaml", "DEEPSPEED"),
        ("deepspeed-zero3-gpus.yaml", "DEEPSPEED"),
    ],
)
def test_the_shipped_accelerate_configs_are_ones_accelerate_reads(name: str, kind: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(ROOT / "configs" / "accelerate" / name)
    assert str(config.distributed_type).endswith(kind) and config.num_processes == 2 and not config.use_cpu
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
    if kind == "DEEPSPEED":
        assert f"zero{config.deepspeed_config['zero_stage']}" in name
        assert config.deepspeed_config["offload_optimizer_device"] == "none"  # offloading is refused


def test_accelerate_launch_with_a_deepspeed_config_trains_with_its_stage(tiny_config, tmp_path) -> None:
    """`accelerate launch` with a DeepSpeed config (here the CPU twin of the shipped ZeRO-3 one) runs the same
    training: tuneforge takes DeepSpeed and its stage from the launch, with train.sharding left at none."""
    import yaml

    shipped = ROOT / "configs" / "accelerate" / "deepspeed-zero3-gpus.yaml"
    launch = yaml.safe_load(shipped.read_text())
    launch.update(gpu_ids=None, main_process_port=_free_port())
    config_file = tmp_path / "deepspeed-cpu.yaml"
    config_file.write_text(yaml.safe_dump(launch))
    cfg = tiny_config(*COMMON, "train.batch_size=4", "train.epochs=1", "name=launched")
    prepare(cfg)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    command += ["-m", "tuneforge", "train", str(cfg.run_dir)]
    done = _run(command)
    assert "data parallel: 2 processes, 4 examples per process per micro-batch, DeepSpeed ZeRO stage 3" in done.stdout
    assert (cfg.run_dir / "model" / "adapter_model.safetensors").is_file()


def test_deepspeed_offload_is_refused_before_training(tiny_config, tmp_path) -> None:
    """tuneforge steps its own AdamW: a DeepSpeed config that offloads the optimizer to the CPU would replace it, so
    the launch stops at once with what to change, and nothing is trained."""
    import yaml

    launch = yaml.safe_load((ROOT / "configs" / "accelerate" / "deepspeed-zero2-gpus.yaml").read_text())
    launch.update(gpu_ids=None, main_process_port=_free_port())
    launch["deepspeed_config"]["offload_optimizer_device"] = "cpu"
    config_file = tmp_path / "offload.yaml"
    config_file.write_text(yaml.safe_dump(launch))
    cfg = tiny_config(*COMMON, "name=offload")
    prepare(cfg)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    done = _run([*command, "-m", "tuneforge", "train", str(cfg.run_dir)], succeeds=False)
    assert "error: DeepSpeed's offload_optimizer is not supported by tuneforge's training loop" in done.stderr
    assert "remove zero_optimization.offload_optimizer from the DeepSpeed config" in done.stderr
    assert "Traceback" not in done.stderr.split("error: DeepSpeed's")[0][-2000:]
    assert not (cfg.run_dir / "model").exists() and not (cfg.run_dir / "metrics.jsonl").exists()


def test_sharding_that_contradicts_the_launch_is_refused(monkeypatch) -> None:
    from tuneforge.errors import ConfigError
    from tuneforge.train.parallel import detect

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="asks for DeepSpeed") as caught:
        detect("cpu", "fsdp")
    assert "fsdp-gpus.yaml" in caught.value.hint


@pytest.mark.parametrize("sharding", ["fsdp", "zero2", "zero3"])
def test_a_sharded_run_resumes_from_its_checkpoint(tiny_config, sharding: str) -> None:
    """FSDP2 and DeepSpeed checkpoints hold the gathered weights and optimizer state: resuming from an early one
    repeats the later steps exactly as the uninterrupted sharded run made them."""
    cfg = tiny_config(*COMMON, "train.batch_size=4", "name=sharded", f"train.sharding={sharding}")
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


def test_every_process_gets_as_many_micro_batches_even_in_a_short_step() -> None:
    """Each backward is a collective operation: a process whose share of a short step (the end of an epoch) runs out
    gets filler batches (loss counted zero) rather than fewer backwards, which would hang the others."""
    from tuneforge.data.tokenize import Encoded
    from tuneforge.train.lm import SFT
    from tuneforge.train.tasks import collate_step

    examples = [Encoded([1, 2, 3][: 1 + i % 3], [-100, 2, 3][: 1 + i % 3]) for i in range(5)]
    first = collate_step(SFT, examples, 2, 0, rank=0, world=2)
    second = collate_step(SFT, examples, 2, 0, rank=1, world=2)
    assert [(b.input_ids.shape[0], b.filler) for b in first] == [(2, False), (1, False)]
    assert [(b.input_ids.shape[0], b.filler) for b in second] == [(2, False), (1, True)]
    alone = collate_step(SFT, examples[:1], 2, 0, rank=1, world=2)  # fewer examples than processes
    assert [b.filler for b in alone] == [True]
    assert [b.filler for b in collate_step(SFT, examples, 2, 0)] == [False] * 3  # one process: never a filler
