"""LeRobot's ``--peft`` on a trained RoboAlign policy, in-process: defaults, what trains, reload, refusals.

The policy is wrapped exactly as lerobot-train does it (``wrap_with_peft`` with the ``--peft`` section as
overrides), saved as lerobot-train's checkpoint does, and reloaded the way lerobot-rollout loads a PEFT policy.
"""

import dataclasses
from pathlib import Path

import pytest
import torch
from lerobot.configs import PeftConfig, PreTrainedConfig
from lerobot.rollout.context import _load_pretrained_policy
from test_policy import make_batch, make_config, observation, seeded_loss, train_steps

from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def save_base(backbone: Path, directory: Path, **overrides) -> Path:
    """A 'trained' policy checkpoint: a few steps on one batch, saved like lerobot-train's pretrained_model."""
    torch.manual_seed(0)
    policy = RoboAlignPolicy(make_config(backbone, push_to_hub=False, **overrides))
    train_steps(policy, make_batch(), steps=3)
    policy.save_pretrained(directory)
    return directory


def load_with_peft(checkpoint: Path, **peft_fields) -> torch.nn.Module:
    """What `lerobot-train --policy.path=CKPT --peft.r=4` does: load, then wrap with the --peft section."""
    config = PreTrainedConfig.from_pretrained(checkpoint)
    config.pretrained_path = checkpoint
    policy = RoboAlignPolicy.from_pretrained(checkpoint, config=config)
    return policy.wrap_with_peft(peft_cli_overrides=dataclasses.asdict(PeftConfig(r=4, **peft_fields)))


@pytest.fixture(scope="module")
def base_checkpoint(tiny_qwen25_backbone, tmp_path_factory) -> Path:
    return save_base(tiny_qwen25_backbone, tmp_path_factory.mktemp("peft") / "base")


def test_default_targets_are_language_attention_adapters_and_the_whole_head(base_checkpoint):
    peft_policy = load_with_peft(base_checkpoint)
    trainable = [n for n, p in peft_policy.named_parameters() if p.requires_grad]
    adapters = [n for n in trainable if "lora_" in n]
    head = [n for n in trainable if ".head.modules_to_save." in n]
    assert adapters and head and len(adapters) + len(head) == len(trainable), trainable[:5]
    assert all(".language_model." in n and n.split(".lora_")[0].endswith(ATTENTION) for n in adapters)
    assert not any(".visual." in n for n in trainable)  # the vision tower keeps its weights
    state_and_action = {"state_encoder", "action_in", "action_out", "feature_projection"}
    assert state_and_action <= {n.split(".modules_to_save.default.")[1].split(".")[0] for n in head}


@pytest.mark.slow  # 30 training steps with a backward pass through the backbone's adapters
def test_peft_fine_tuning_trains_only_adapters_and_head_and_reloads_with_identical_actions(base_checkpoint, tmp_path):
    peft_policy = load_with_peft(base_checkpoint)
    batch = make_batch()
    before_state = {k: v.clone() for k, v in peft_policy.state_dict().items()}
    before = sum(seeded_loss(peft_policy, batch, seed) for seed in range(4))
    train_steps(peft_policy, batch, steps=30)
    after = sum(seeded_loss(peft_policy, batch, seed) for seed in range(4))
    assert after < 0.7 * before, (before, after)

    after_state = peft_policy.state_dict()
    changed = {k for k in before_state if not torch.equal(before_state[k], after_state[k])}
    assert any("lora_B" in k for k in changed), "no gradient reached the adapters of the frozen backbone"
    assert any(".image_token_norm.modules_to_save." in k for k in changed), "the image-token statistics follow"
    kept_apart = (".head.modules_to_save.", ".image_token_norm.modules_to_save.")
    assert all("lora_" in k or any(m in k for m in kept_apart) for k in changed), sorted(changed)[:5]

    # As lerobot-train's save_checkpoint writes a PEFT policy: adapters + modules_to_save, then the config.
    saved = tmp_path / "pretrained_model"
    peft_policy.save_pretrained(saved)
    peft_policy.config.save_pretrained(saved)
    config = PreTrainedConfig.from_pretrained(saved)
    config.pretrained_path = saved
    assert config.use_peft
    reloaded = _load_pretrained_policy(config).eval()
    obs = observation(batch)
    for param in peft_policy.parameters():  # as PEFT loads for inference: float kernels can differ otherwise
        param.requires_grad_(False)
    torch.manual_seed(3)
    expected = peft_policy.eval().predict_action_chunk(obs)
    torch.manual_seed(3)
    assert torch.equal(reloaded.predict_action_chunk(obs), expected)
    torch.manual_seed(3)
    base = RoboAlignPolicy.from_pretrained(base_checkpoint).predict_action_chunk(obs)
    assert not torch.allclose(base, expected), "the fine-tuned policy acts like the base: nothing was loaded"


def test_peft_on_a_lora_mode_checkpoint_is_refused_with_the_fix(tiny_qwen25_backbone, tmp_path):
    checkpoint = save_base(tiny_qwen25_backbone, tmp_path / "lora", backbone_mode="lora", lora_rank=4)
    with pytest.raises(ValueError, match="already has LoRA adapters.*without --peft"):
        load_with_peft(checkpoint)


def test_peft_push_of_a_local_base_policy_is_refused_before_training(base_checkpoint):
    config = PreTrainedConfig.from_pretrained(base_checkpoint)
    config.pretrained_path = base_checkpoint
    config.push_to_hub = True
    policy = RoboAlignPolicy.from_pretrained(base_checkpoint, config=config)
    with pytest.raises(ValueError, match=r"push the base policy first \(`hf upload"):
        policy.wrap_with_peft(peft_cli_overrides=dataclasses.asdict(PeftConfig(r=4)))
