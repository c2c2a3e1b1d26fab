"""The VLA's trainable backbone weights are float32 (issue 10, item 7).

``backbone_dtype=bfloat16`` on the CPU is what ``auto`` picks on CUDA, so these runs build the configuration
a GPU run would get: frozen and LoRA keep the frozen base in bfloat16, LoRA adapters and a fully trained
backbone are float32 master weights, and ``full`` runs the backbone under bfloat16 autocast. On a machine
with a GPU the training test also runs on CUDA with ``auto``.
"""

from pathlib import Path

import pytest
import torch
from lerobot.configs import FeatureType, PolicyFeature

from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy
from lerobot_roboalign.precision import vla_precision

CAMERA = "observation.images.front"
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def make_policy(backbone: Path, mode: str, device: str = "cpu") -> RoboAlignPolicy:
    """On the CPU bfloat16 is asked for explicitly; on CUDA it is what ``auto`` (the default) picks."""
    torch.manual_seed(0)
    config = RoboAlignConfig(
        vlm_model_name=str(backbone), vlm_layer=2, backbone_mode=mode, lora_rank=4,
        backbone_dtype="bfloat16" if device == "cpu" else "auto",
        head_hidden_size=32, head_num_layers=1, head_num_heads=2, image_resolution=(56, 56), device=device,
        input_features={CAMERA: PolicyFeature(FeatureType.VISUAL, (3, 32, 32))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
    )
    return RoboAlignPolicy(config).to(device)


def batch(device: str = "cpu") -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        CAMERA: torch.rand(2, 3, 32, 32, generator=generator).to(device),
        "action": torch.randn(2, 16, 2, generator=generator).to(device),
        "action_is_pad": torch.zeros(2, 16, dtype=torch.bool, device=device),
        "task": ["pick up the cube", "open the drawer"],
    }


def train(
    policy: RoboAlignPolicy, steps: int, lr: float, device: str = "cpu"
) -> tuple[torch.optim.Optimizer, list[torch.dtype]]:
    """AdamW steps as lerobot-train takes them; returns the optimizer and the dtypes of one backbone matmul."""
    matmul_dtypes = []
    linear = next(m for n, m in policy.backbone.named_modules() if n.endswith("layers.0.mlp.up_proj"))
    linear = getattr(linear, "base_layer", linear)
    handle = linear.register_forward_hook(lambda m, i, o: matmul_dtypes.append(o.dtype))
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=lr)
    policy.train()
    for step in range(steps):
        torch.manual_seed(step)
        loss, _ = policy.forward(batch(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    handle.remove()
    return optimizer, matmul_dtypes


def test_a_cuda_run_configures_float32_training_and_bf16_frozen_weights():
    frozen, lora, full = (vla_precision(mode, "auto", "cuda") for mode in ("frozen", "lora", "full"))
    assert (frozen.load, frozen.autocast) == (torch.bfloat16, None)
    assert (lora.load, lora.autocast, lora.trainable) == (torch.bfloat16, None, torch.float32)
    assert (full.load, full.autocast, full.trainable) == (torch.float32, torch.bfloat16, torch.float32)
    assert vla_precision("full", "auto", "cpu").autocast is None  # float32 throughout on the CPU


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_trained_backbone_weights_are_float32_and_learn_at_small_lr(tiny_qwen25_backbone, mode, device):
    policy = make_policy(tiny_qwen25_backbone, mode, device)
    trained = {n: p for n, p in policy.backbone.named_parameters() if p.requires_grad}
    assert trained and {p.dtype for p in policy.get_optim_params()} == {torch.float32}
    frozen = {p.dtype for p in policy.backbone.parameters() if not p.requires_grad}
    assert frozen == ({torch.bfloat16} if mode == "lora" else set())
    before = {n: p.detach().clone() for n, p in trained.items()}
    optimizer, matmul_dtypes = train(policy, steps=2, lr=1e-6, device=device)
    assert {p.device.type for p in policy.parameters()} == {device}
    assert {s["exp_avg"].dtype for s in optimizer.state.values()} == {torch.float32}
    assert set(matmul_dtypes) == {torch.bfloat16}  # the base (lora) or autocast (full) computes in bf16
    layers = [n for n in trained if ".language_model.layers." in n]  # (embedding rows of unused tokens stay)
    changed = sum(int((before[n] != trained[n]).sum()) for n in layers) / sum(before[n].numel() for n in layers)
    assert changed > 0.9, f"only {changed:.1%} of the trained language-layer weights moved at lr 1e-6"
    if mode == "full":
        norms = [n for n in trained if n.endswith("layernorm.weight")]
        assert norms and all((before[n] != trained[n]).any() for n in norms)
