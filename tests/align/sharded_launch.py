"""`roboalign ...` under `accelerate launch` on CPU ranks with FSDP or DeepSpeed, for the sharded-save tests.

accelerate maps FSDP and DeepSpeed only onto GPU ranks: on CPU it silently falls back to plain data parallelism
(FSDP) or a one-process state (DeepSpeed). The shim below is the one change: the ranks are gloo CPU processes
(PartialState), and FSDP is kept on them (AcceleratorState). Everything else is accelerate's, TRL's and
DeepSpeed's own code (DeepSpeed runs its CPU accelerator).

Before the final save, every rank also writes its own shard of each trained parameter to
``$SHARDS_DIR/rank<i>.pt`` (FSDP: the DTensor's local shard; ZeRO-3: the flat partition), so a test can rebuild
the trained weights without the gather it checks, and records in ``$SHARDS_DIR/load<i>.json`` whether the
sharded load was on (ZeRO-3 init, FSDP's cpu-ram-efficient loading) when the model was loaded.

With ``$REWARD_STUB`` set, GRPO scores completions with :func:`stub_reward_funcs` (TRL's reward_funcs interface)
instead of the action reward: an untrained tiny model never writes a valid action span, so its rewards would all be
0 and GRPO would have no advantage to learn from.
"""

import json
import os
import sys

import accelerate.state as state
import torch
from accelerate.utils import DistributedType

_prepare_backend = state.PartialState._prepare_backend
_accelerator_state_init = state.AcceleratorState.__init__


def cpu_backend(self, cpu=False, sagemaker_dp=False, backend=None):
    return _prepare_backend(self, True, sagemaker_dp, backend)  # gloo CPU ranks, whatever drives them


def keep_fsdp_on_cpu(self, *args, **kwargs):
    _accelerator_state_init(self, *args, **kwargs)  # each call copies PartialState's MULTI_CPU over FSDP again
    plugin = kwargs.get("fsdp_plugin") or self.__dict__.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin


def local_shards(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    shards = {}
    for name, param in model.named_parameters():
        local = param.to_local() if hasattr(param, "to_local") else getattr(param, "ds_tensor", param.data)
        shards[name] = local.detach().float().cpu().clone()
    return shards


def dump_shards_before(gather):
    def wrapped(trainer, *args, **kwargs):
        torch.save(local_shards(trainer), f"{os.environ['SHARDS_DIR']}/rank{trainer.accelerator.process_index}.pt")
        return gather(trainer, *args, **kwargs)

    return wrapped


def stub_reward_funcs(*args, **kwargs) -> list:
    """Two rewards that vary with the sampled tokens, in place of ``rewards.make_reward_funcs``'s format and action."""

    def token_sum(completion_ids, **_) -> list[float]:
        return [sum(ids) % 11 / 10 for ids in completion_ids]

    def token_count(completion_ids, **_) -> list[float]:
        return [len(set(ids)) / max(len(ids), 1) for ids in completion_ids]

    return [token_sum, token_count]


def record_sharded_load(from_pretrained):
    def wrapped(*args, **kwargs):
        from transformers.integrations import is_deepspeed_zero3_enabled
        from transformers.modeling_utils import is_fsdp_enabled

        rank = int(os.environ.get("RANK", 0))
        flags = {"zero3_init": is_deepspeed_zero3_enabled(), "fsdp_cpu_ram_efficient_loading": is_fsdp_enabled()}
        with open(f"{os.environ['SHARDS_DIR']}/load{rank}.json", "a") as file:
            file.write(json.dumps(flags) + "\n")
        return from_pretrained(*args, **kwargs)

    return wrapped


if __name__ == "__main__":
    from lerobot_roboalign import cli
    from lerobot_roboalign.align import common, grpo

    state.PartialState._prepare_backend = cpu_backend
    state.AcceleratorState.__init__ = keep_fsdp_on_cpu
    if os.environ.get("SHARDS_DIR"):
        common.gather_full_state_dict = dump_shards_before(common.gather_full_state_dict)  # the final save's gather
        common.AutoModelForImageTextToText.from_pretrained = record_sharded_load(
            common.AutoModelForImageTextToText.from_pretrained
        )
    if os.environ.get("REWARD_STUB"):
        grpo.make_reward_funcs = stub_reward_funcs
    cli.main(sys.argv[1:])
