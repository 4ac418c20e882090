"""Data parallelism through an existing engine: processes started by `torchrun` or `accelerate launch`.

Every optimizer step's examples are dealt out across the processes. Three engines run the same loop:

- `ddp` (train.sharding=none): each process holds the whole model; Accelerate's prepared model
  (DistributedDataParallel: NCCL on GPUs, gloo on CPUs) averages the gradients.
- `fsdp` (train.sharding=fsdp, or an accelerate config with distributed_type FSDP): PyTorch's FSDP2
  (`fully_shard`, per transformer block and then the whole model) splits weights, gradients and optimizer state,
  gathering each block's weights only while it runs. Accelerate's own FSDP plugin is not used: on CPUs it falls
  back to DistributedDataParallel, so it could not be tested here, while `fully_shard` runs on gloo and NCCL alike.
- `deepspeed` (train.sharding=zero2|zero3, or an accelerate config with distributed_type DEEPSPEED): Accelerate
  builds DeepSpeed's engine around the model and our AdamW (ZeRO stage 2 shards gradients and optimizer state,
  stage 3 the weights too); the engine runs backward, clipping (train.max_grad_norm) and the optimizer step, our
  schedule keeps setting the learning rate. On CPUs it runs on gloo, which is how the tests run it.

Checkpoints and the saved model hold whole (gathered) weights and optimizer state, whatever the engine (every
process takes part in gathering, the main one writes; DeepSpeed's AdamW state is saved as torch's own
`optimizer.state_dict()` format, not as DeepSpeed's pickled checkpoints). Only the main process writes files.
A single process (no WORLD_SIZE in the environment) never touches torch.distributed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from tuneforge.errors import ConfigError
from tuneforge.models import decoder_layers

ADAM_STATES = ("exp_avg", "exp_avg_sq")


@dataclass
class Parallel:
    """This process's place among the data-parallel workers (rank 0 of 1 when alone) and the engine they run."""

    accelerator: Any = None
    rank: int = 0
    world: int = 1
    engine: str = "ddp"  # ddp | fsdp | deepspeed
    zero_stage: int = 0  # DeepSpeed's ZeRO stage
    _deepspeed: Any = None  # DeepSpeed's engine, once `start` built it

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """What each process holds, for the log."""
        return {
            "ddp": "a whole model in each",
            "fsdp": "weights, gradients and optimizer state sharded (FSDP2)",
            "deepspeed": f"DeepSpeed ZeRO stage {self.zero_stage}",
        }[self.engine]

    def wrap(self, model: Any) -> Any:
        """The model as DDP or FSDP2 run it (FSDP2 replaces the parameters by their shards: build the optimizer
        after this); DeepSpeed wraps model and optimizer together, in `start`."""
        if self.world == 1 or self.engine == "deepspeed":
            return model
        if self.engine == "ddp":
            return self.accelerator.prepare_model(model)
        from torch.distributed.fsdp import fully_shard

        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        for block in decoder_layers(inner):
            fully_shard(block)
        fully_shard(model)
        return model

    def start(self, model: Any, optimizer: Any, batch_size: int, max_grad_norm: float) -> Any:
        """The model the loop steps: DeepSpeed's engine around `model` and `optimizer` (which stays the optimizer
        DeepSpeed steps, so a schedule built on it keeps working), else `model` as it is."""
        if self.world == 1 or self.engine != "deepspeed":
            return model
        config = self.accelerator.state.deepspeed_plugin.deepspeed_config
        # one engine step per optimizer step: the loop accumulates and normalises the micro-batches itself
        config.update(
            train_micro_batch_size_per_gpu=batch_size,
            gradient_accumulation_steps=1,
            train_batch_size=batch_size * self.world,
            gradient_clipping=max_grad_norm,
        )
        engine, _ = self.accelerator.prepare(model, optimizer)
        if engine.optimizer.optimizer is not optimizer:
            raise ConfigError(
                "this DeepSpeed config replaces the optimizer (optimizer offload or an 'optimizer' section)",
                "remove offload_optimizer and the optimizer section from the DeepSpeed config: tuneforge steps AdamW "
                "with train.learning_rate and train.weight_decay",
            )
        self._deepspeed = engine
        return engine

    def backward(self, model: Any, loss: torch.Tensor, last: bool) -> None:
        """Backpropagate one micro-batch's loss (`last`: the step's last micro-batch)."""
        if self._deepspeed is None:
            loss.backward()
            return
        model.set_gradient_accumulation_boundary(last)
        model.backward(loss)

    def step(self, model: Any, optimizer: Any, params: list[Any], max_grad_norm: float) -> None:
        """Clip the gradients, step the optimizer and clear the gradients."""
        if self._deepspeed is not None:
            model.step()  # DeepSpeed clips (gradient_clipping), steps and clears the gradients
            return
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def unwrap(self, model: Any) -> Any:
        """The model inside the engine's wrapper (for evaluation and saving; a sharded model is its own)."""
        if self.world == 1 or self.engine == "fsdp":
            return model
        return model.module if self.engine == "deepspeed" else self.accelerator.unwrap_model(model)

    def full_state(self, model: Any) -> dict[str, Any] | None:
        """The whole state dict of a sharded model on the main process (every process must call this); None when
        the model holds its whole weights and saves itself."""
        if self.engine == "deepspeed" and self.world > 1:
            import deepspeed

            # ZeRO-3 keeps a shard of each weight: gather them for a moment (nothing to gather under ZeRO-2)
            with deepspeed.zero.GatheredParameters(list(model.parameters())):
                return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if self.main else None
        if self.engine != "fsdp" or self.world == 1:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.main else None

    def optimizer_state(self, model: Any, optimizer: Any) -> dict[str, Any] | None:
        """The optimizer state to checkpoint, whole and in torch's own format, on the main process (every process
        must call this; `model`: the unwrapped model)."""
        if self._deepspeed is not None:
            return self._deepspeed_optimizer_state(model, optimizer)
        if self.engine != "fsdp" or self.world == 1:
            return optimizer.state_dict() if self.main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_optimizer_state_dict(model, optimizer, options=options)
        return state if self.main else None

    def load_optimizer_state(self, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
        """Restore a checkpointed optimizer state (each process read the whole state from the checkpoint)."""
        if self._deepspeed is not None:
            self._load_deepspeed_optimizer_state(optimizer, state)
        elif self.engine != "fsdp" or self.world == 1:
            optimizer.load_state_dict(state)
        else:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def _deepspeed_optimizer_state(self, model: Any, optimizer: Any) -> dict[str, Any] | None:
        """AdamW's state gathered from DeepSpeed's partitions, as `optimizer.state_dict()` of one process."""
        from deepspeed.utils import safe_get_full_optimizer_state

        params = [p for p in model.parameters() if p.requires_grad]
        states = [{k: safe_get_full_optimizer_state(p, k) for k in ADAM_STATES} for p in params]
        if not self.main:
            return None
        steps = [s["step"] for s in optimizer.state.values()]
        group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        return {
            "state": {
                i: {"step": steps[0].clone(), **{k: v.detach().cpu().clone() for k, v in s.items()}}
                for i, s in enumerate(states)
                if steps
            },
            "param_groups": [{**group, "params": list(range(len(params)))}],
        }

    def _load_deepspeed_optimizer_state(self, optimizer: Any, state: dict[str, Any]) -> None:
        """Spread a whole AdamW state over DeepSpeed's partitions (`optimizer`: the AdamW DeepSpeed steps)."""
        from deepspeed.utils import safe_set_full_optimizer_state

        for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=False):
            group.update({k: v for k, v in saved.items() if k != "params"})
        entries = {int(k): v for k, v in state["state"].items()}
        if not entries:
            return
        step, zero = entries[0]["step"], self._deepspeed.optimizer
        # AdamW creates its state (one per flat partition DeepSpeed hands it) at its first step, and DeepSpeed links
        # each weight's slice of it only then: create it now. ZeRO-3 lends AdamW its partitions only while stepping.
        flats = getattr(zero, "fp32_partitioned_groups_flat", None) or [
            flat for group in optimizer.param_groups for flat in group["params"]
        ]
        for flat in flats:
            optimizer.state[flat] = {"step": step.clone(), **{k: torch.zeros_like(flat) for k in ADAM_STATES}}
        if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1 and 2 (ZeRO-3 looks its slices up)
            zero._lazy_init_hp_params_optimizer_state()
        params = [p for p in self._deepspeed.module.parameters() if p.requires_grad]
        for i, param in enumerate(params):
            for key in ADAM_STATES:
                safe_set_full_optimizer_state(param, entries[i][key], key)

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


def is_deepspeed_engine(model: Any) -> bool:
    """Whether `model` is DeepSpeed's engine (without importing DeepSpeed when nothing did)."""
    deepspeed = sys.modules.get("deepspeed")
    return deepspeed is not None and isinstance(model, deepspeed.DeepSpeedEngine)


def unwrap(model: Any) -> tuple[Any, bool]:
    """The model inside a DistributedDataParallel or DeepSpeed wrapper, and whether the engine's own forward must
    run (DDP's syncs the gradients, DeepSpeed's keeps its bookkeeping; an FSDP2-sharded model gathers its weights
    in the hooks of its top-level forward)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, torch.nn.parallel.DistributedDataParallel) or is_deepspeed_engine(model):
        return model.module, True
    return model, isinstance(model, FSDPModule)


def detect(device: str, sharding: str = "none") -> Parallel:
    """The data-parallel setup this process was launched into (`sharding`: train.sharding)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Parallel()
    if sharding.startswith("zero") or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return _deepspeed(device, sharding)
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")  # bf16 is our own autocast
    # an accelerate config with distributed_type FSDP asks for sharding as train.sharding=fsdp does
    engine = "fsdp" if sharding == "fsdp" or accelerator.distributed_type == DistributedType.FSDP else "ddp"
    return Parallel(accelerator, accelerator.process_index, accelerator.num_processes, engine)


def _deepspeed(device: str, sharding: str) -> Parallel:
    """DeepSpeed through Accelerate: the stage of train.sharding, or of the accelerate config it was launched with."""
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # spares DeepSpeed's search for a GPU (and its warning)
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError(
            "DeepSpeed is not installed", 'pip install "tuneforge[deepspeed]" (or train.sharding=fsdp)'
        ) from None
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    launched = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if sharding == "fsdp":
        raise ConfigError(
            "train.sharding=fsdp, but the accelerate config this was launched with asks for DeepSpeed",
            "use one engine: launch with configs/accelerate/fsdp-gpus.yaml, or set train.sharding=none",
        )
    # an accelerate config brings its own DeepSpeed settings; train.sharding=zeroN alone asks for stage N
    plugin = None if launched else DeepSpeedPlugin(zero_stage=int(sharding[-1]))
    # without a GPU Accelerate would start no process group for DeepSpeed: gloo, as for DDP on CPUs
    handlers = [InitProcessGroupKwargs(backend="gloo")] if device == "cpu" else []
    accelerator = Accelerator(mixed_precision="no", deepspeed_plugin=plugin, kwargs_handlers=handlers)
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    zero = ds_config.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    if sharding.startswith("zero") and int(sharding[-1]) != stage:
        raise ConfigError(
            f"train.sharding={sharding}, but the DeepSpeed config this was launched with sets ZeRO stage {stage}",
            "make them agree, or set train.sharding=none to take the launch config's stage",
        )
    for part in ("offload_optimizer", "offload_param"):
        if str(zero.get(part, {}).get("device", "none")) != "none":
            raise ConfigError(
                f"DeepSpeed's {part} is not supported by tuneforge's training loop",
                f"remove zero_optimization.{part} from the DeepSpeed config (or use train.sharding=fsdp)",
            )
    return Parallel(accelerator, accelerator.process_index, accelerator.num_processes, "deepspeed", stage)
