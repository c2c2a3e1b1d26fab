"""Which weights are float32 and which computations run in bfloat16, for alignment and for the VLA.

Trained weights are float32 master weights, always: AdamW's steps at the paper's learning rates (2e-5 for SFT,
1e-6 for GRPO) are far below bfloat16's resolution (8 mantissa bits: a weight of 0.02 moves in steps of about
1.2e-4, a norm weight of 1.0 in steps of 7.8e-3), so weights stored in bfloat16 mostly never change. Speed and
activation memory come from autocast instead: on a GPU the matmuls run in bfloat16 while the optimizer updates
float32 weights (and so keeps its state in float32). Weights that never train may stay in bfloat16, at half the
memory: the VLA's frozen backbone (also the base under LoRA adapters) and GRPO's KL reference model (TRL builds
it in that dtype from ``model_init_kwargs``). The aligned model is saved in float32 under every launch: DeepSpeed
computes with 16-bit module weights, so the final save takes its optimizer's float32 masters
(``align.common.gather_full_state_dict``).
"""

from dataclasses import dataclass

import torch
from torch import nn

from .backbone import resolve_dtype

TRAINABLE_DTYPE = torch.float32


@dataclass(frozen=True)
class PrecisionPlan:
    """The dtypes of one training run."""

    load: torch.dtype  # the weights as loaded (from_pretrained(dtype=...))
    autocast: torch.dtype | None  # torch.autocast's dtype for the forward pass; None: the weights' own dtype
    frozen: torch.dtype  # weights that never train: GRPO's reference model, a frozen VLA backbone
    trainable: torch.dtype = TRAINABLE_DTYPE  # master weights, hence also AdamW's state

    def trainer_flags(self, device: str) -> dict:
        """transformers/TRL TrainingArguments flags for this plan (accelerate then wraps the forward in autocast)."""
        return dict(
            bf16=self.autocast == torch.bfloat16,
            fp16=self.autocast == torch.float16,
            use_cpu=self.autocast is not None and device == "cpu",  # accelerate's CPU autocast needs use_cpu
        )


def training_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(name: str, device: str, bf16_supported: bool | None = None) -> torch.dtype:
    """``--*.dtype``: ``auto`` is bfloat16 on a CUDA GPU that supports it and float32 elsewhere."""
    dtype = resolve_dtype(name, device)
    if name == "auto" and dtype == torch.bfloat16:
        supported = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        dtype = torch.bfloat16 if supported else torch.float32
    return dtype


def align_precision(name: str, device: str, bf16_supported: bool | None = None) -> PrecisionPlan:
    """SFT / GRPO: float32 weights, autocast to the compute dtype, reference model in the compute dtype.

    The whole model is float32 even where parts are frozen (SFT's vision tower): DeepSpeed and FSDP want one
    dtype per parameter group, and cast to bfloat16 for compute themselves.
    """
    compute = compute_dtype(name, device, bf16_supported)
    return PrecisionPlan(load=torch.float32, autocast=None if compute == torch.float32 else compute, frozen=compute)


def vla_precision(backbone_mode: str, name: str, device: str) -> PrecisionPlan:
    """The VLA's backbone: frozen and LoRA keep the (frozen) base in the compute dtype, full trains it in float32.

    LoRA adapters are cast to float32 after injection (:func:`cast_trainable`); peft casts their input to their
    dtype, so they need no autocast. A fully trained backbone is loaded in float32 and runs under autocast.
    """
    compute = resolve_dtype(name, device)
    if backbone_mode == "full":
        return PrecisionPlan(load=torch.float32, autocast=None if compute == torch.float32 else compute, frozen=compute)
    return PrecisionPlan(load=compute, autocast=None, frozen=compute)


def cast_trainable(module: nn.Module, dtype: torch.dtype = TRAINABLE_DTYPE) -> int:
    """Cast every parameter that requires grad to ``dtype`` (in place); returns how many were cast."""
    cast = 0
    for param in module.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
            cast += 1
    return cast
