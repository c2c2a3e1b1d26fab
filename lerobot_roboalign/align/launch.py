"""What an alignment command checks about its launch before it loads anything, and what it changes for FSDP.

``accelerate launch`` passes the config file's choices to every rank as environment variables (``ACCELERATE_*``,
``LOCAL_WORLD_SIZE``). :func:`check_launch` compares them with the machine: the GPUs a config asks for, bf16 on a
GPU without it, DeepSpeed not installed, FSDP/DeepSpeed on CPU ranks (accelerate silently runs plain data
parallelism there); a mismatch stops every rank at once with what to change, instead of ranks that wait for minutes.
"""

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

CPU_CONFIG = "examples/accelerate/cpu/ddp.yaml"
T = TypeVar("T")


@dataclass
class LaunchRequest:
    """What the launch asks of this machine, as ``accelerate launch`` hands it to each rank."""

    processes: int  # on this machine
    cpu: bool
    mixed_precision: str
    deepspeed: bool
    fsdp: bool

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "LaunchRequest":
        env = os.environ if env is None else env
        flag = lambda name: env.get(name, "false").lower() in ("1", "true", "yes")  # noqa: E731
        return cls(
            processes=int(env.get("LOCAL_WORLD_SIZE", "1")),
            cpu=flag("ACCELERATE_USE_CPU"),
            mixed_precision=env.get("ACCELERATE_MIXED_PRECISION", "no"),
            deepspeed=flag("ACCELERATE_USE_DEEPSPEED"),
            fsdp=flag("ACCELERATE_USE_FSDP"),
        )


def launch_problems(request: LaunchRequest, gpus: int, bf16_gpu: bool, deepspeed_installed: bool) -> list[str]:
    """Each way ``request`` does not fit a machine with ``gpus`` CUDA GPUs, with the change that fixes it."""
    problems = []
    if request.deepspeed and not deepspeed_installed:
        problems.append("The accelerate config uses DeepSpeed, which is not installed. Fix: pip install "
                        "'lerobot_policy_roboalign[deepspeed]', or launch with examples/accelerate/fsdp.yaml.")
    if request.cpu:
        return problems
    # Without a GPU: GPU mixed precision (what the GPU configs ask), or ranks that only ACCELERATE_USE_CPU makes CPU
    # ones (DeepSpeed runs its own CPU accelerator, in float32).
    if gpus == 0 and (request.mixed_precision != "no" or (request.processes > 1 and not request.deepspeed)):
        problems.append(
            f"The accelerate config asks for {request.processes} GPU process(es) (mixed precision "
            f"{request.mixed_precision}{', DeepSpeed' if request.deepspeed else ''}{', FSDP' if request.fsdp else ''}) "
            f"but this machine has no CUDA GPU. Fix: run it where the GPUs are (`roboalign align plan` says how many), "
            f"or try the distributed path at tiny size on CPU ranks: ACCELERATE_USE_CPU=true accelerate launch "
            f"--config_file {CPU_CONFIG} -m lerobot_roboalign.cli ..."
        )
    elif request.processes > gpus > 0:
        problems.append(f"The accelerate config starts {request.processes} processes on this machine, which has {gpus} "
                        f"CUDA GPU(s). Fix: pass --num_processes={gpus} to accelerate launch (or edit num_processes).")
    if gpus > 0 and request.mixed_precision == "bf16" and not bf16_gpu:
        problems.append("The accelerate config asks for bf16 mixed precision, which this GPU does not support "
                        "(pre-Ampere). Fix: pass --mixed_precision=fp16 to accelerate launch.")
    return problems


def check_launch(env: dict[str, str] | None = None) -> None:
    """Stop with every problem of this launch at once (see :func:`launch_problems`); warn where CPU drops sharding."""
    request = LaunchRequest.from_env(env)
    gpus = torch.cuda.device_count()
    problems = launch_problems(request, gpus, gpus > 0 and torch.cuda.is_bf16_supported(),
                               importlib.util.find_spec("deepspeed") is not None)
    if problems:
        raise SystemExit("roboalign: this launch does not fit this machine:\n- " + "\n- ".join(problems))
    if request.cpu and (request.deepspeed or request.fsdp):
        logger.warning("CPU ranks (ACCELERATE_USE_CPU): accelerate runs plain data parallelism, not %s.",
                       "DeepSpeed" if request.deepspeed else "FSDP")


def with_whole_reference(beta: float, build: Callable[[], T]) -> T:
    """``build()`` a GRPOTrainer whose KL reference is loaded in full on every rank under FSDP.

    Under FSDP's cpu-ram-efficient loading only rank 0 reads the weights (the others hold ``torch.empty``) and
    accelerate broadcasts the policy's when it prepares it; TRL builds and shards the reference itself without that
    broadcast, so the other ranks' reference was garbage: NaN KL and gradients at step 1. While the trainer is built
    the loading is off, so each rank reads the reference (2 bytes per parameter of host RAM) before FSDP shards it;
    then it is on again, so that the policy is still broadcast from rank 0 as launched.
    """
    key = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    saved = os.environ.get(key)
    if not beta or os.environ.get("ACCELERATE_USE_FSDP") != "true" or str(saved).lower() not in ("1", "true"):
        return build()
    os.environ[key] = "false"
    try:
        trainer = build()
    finally:
        os.environ[key] = saved
    trainer.accelerator.state.fsdp_plugin.cpu_ram_efficient_loading = True
    return trainer
