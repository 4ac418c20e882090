"""Data parallelism through an existing engine: processes started by `torchrun` or `accelerate launch`.

Every optimizer step's examples are dealt out across the processes. By default each process holds the whole
model and Accelerate's prepared model (DistributedDataParallel: NCCL on GPUs, gloo on CPUs) averages the
gradients. With `train.sharding: fsdp` PyTorch's FSDP2 (`fully_shard`, per transformer block and then the whole
model) splits weights, gradients and optimizer state across the processes instead, gathering each block's weights
only while it runs; saving then gathers the whole state dict (every process takes part, the main one writes).
Accelerate's own FSDP plugin is not used: on CPUs it falls back to DistributedDataParallel, so it could not be
tested here, while `fully_shard` runs on gloo and NCCL alike. Only the main process writes files. A single process
(no WORLD_SIZE in the environment) never touches torch.distributed.
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
    sharded: bool = False  # FSDP2 across the processes (train.sharding=fsdp)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: Any) -> Any:
        """The model as the engine runs it: DistributedDataParallel, or sharded in place by FSDP2. Build the
        optimizer after this: FSDP2 replaces the parameters by their shards."""
        if self.world == 1:
            return model
        if not self.sharded:
            return self.accelerator.prepare_model(model)
        from torch.distributed.fsdp import fully_shard

        from tuneforge.train.methods import decoder_layers

        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        for block in decoder_layers(inner):
            fully_shard(block)
        fully_shard(model)
        return model

    def unwrap(self, model: Any) -> Any:
        """The model inside the engine's wrapper (for evaluation and saving; a sharded model is its own)."""
        return self.accelerator.unwrap_model(model) if self.world > 1 and not self.sharded else model

    def full_state(self, model: Any) -> dict[str, Any] | None:
        """A sharded model's whole state dict on the main process (every process must call this); None when the
        model is not sharded (it saves itself)."""
        if not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.main else None

    def optimizer_state(self, model: Any, optimizer: Any) -> dict[str, Any] | None:
        """The optimizer state to checkpoint, whole, on the main process (every process must call this)."""
        if not self.sharded:
            return optimizer.state_dict() if self.main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(model, optimizer, options=options)
        return state if self.main else None

    def load_optimizer_state(self, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
        """Restore a checkpointed optimizer state (each process read the whole state from the checkpoint)."""
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

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


def detect(device: str, sharding: str = "none") -> Parallel:
    """The data-parallel setup this process was launched into (`sharding`: train.sharding)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Parallel()
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")  # bf16 is our own autocast
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        from tuneforge.errors import ConfigError

        raise ConfigError(
            "DeepSpeed is not supported: tuneforge's training loop runs its own backward and optimizer step",
            "launch with configs/accelerate/fsdp-gpus.yaml (or set train.sharding=fsdp): FSDP2 shards weights, "
            "gradients and optimizer state as ZeRO stage 3 does",
        )
    # an accelerate config with distributed_type FSDP asks for sharding as train.sharding=fsdp does
    sharded = sharding == "fsdp" or accelerator.distributed_type == DistributedType.FSDP
    return Parallel(accelerator, accelerator.process_index, accelerator.num_processes, sharded)
