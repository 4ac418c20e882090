"""Data parallelism through an existing engine: processes started by `torchrun` or `accelerate launch`.

Each process holds the whole model; every optimizer step's examples are dealt out across the processes, and
Accelerate's prepared model (DistributedDataParallel: NCCL on GPUs, gloo on CPUs) averages the gradients. Only the
main process writes files. A single process (no WORLD_SIZE in the environment) never touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Parallel:
    """This process's place among the data-parallel workers (rank 0 of 1 when alone)."""

    accelerator: Any = None
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: Any) -> Any:
        """The model as the engine runs it (DistributedDataParallel across processes)."""
        return self.accelerator.prepare_model(model) if self.world > 1 else model

    def unwrap(self, model: Any) -> Any:
        """The model inside the engine's wrapper (for evaluation and saving)."""
        return self.accelerator.unwrap_model(model) if self.world > 1 else model

    def shard(self, items: list[Any]) -> list[Any]:
        """This process's share of one step's examples (every world-th, so lengths stay alike)."""
        return items[self.rank :: self.world]

    def total(self, value: float) -> float:
        """The sum of `value` over all processes."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, reduction="sum").item())

    def barrier(self) -> None:
        """Wait until every process gets here (before reading what the main process wrote)."""
        if self.world > 1:
            self.accelerator.wait_for_everyone()


def detect(device: str) -> Parallel:
    """The data-parallel setup this process was launched into."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Parallel()
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")  # bf16 is our own autocast
    return Parallel(accelerator, accelerator.process_index, accelerator.num_processes)
