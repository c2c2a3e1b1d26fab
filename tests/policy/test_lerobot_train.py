"""`lerobot-train --policy.type=roboalign` as a user runs it, then reload through LeRobot's factory."""

import json
from pathlib import Path

import pytest
import torch
from lerobot.configs import PreTrainedConfig
from lerobot.datasets import LeRobotDataset
from lerobot.policies.factory import make_policy, make_pre_post_processors
from safetensors.torch import load_file

import lerobot_policy_roboalign  # noqa: F401  (what LeRobot's plugin discovery imports)
from lerobot_roboalign.runner import run_lerobot, train_args

pytestmark = pytest.mark.slow


def reload_and_act(checkpoint: Path, dataset: LeRobotDataset, seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """Load exactly as lerobot-eval/lerobot-rollout do, then act on the dataset's first frame."""
    config = PreTrainedConfig.from_pretrained(checkpoint)
    config.pretrained_path = checkpoint
    policy = make_policy(config, ds_meta=dataset.meta)
    preprocessor, postprocessor = make_pre_post_processors(config, pretrained_path=checkpoint)
    frame = dataset[0]
    observation = {k: v for k, v in frame.items() if k.startswith("observation.")}
    observation["task"] = frame["task"]
    torch.manual_seed(seed)
    return policy, postprocessor(policy.select_action(preprocessor(observation)))


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_train_checkpoint_reload_gives_same_actions(arch, roboalign_checkpoint_factory, synthetic_dataset):
    checkpoint = roboalign_checkpoint_factory(arch)
    root, repo_id = synthetic_dataset
    dataset = LeRobotDataset(repo_id, root=root)
    assert dataset.meta.total_tasks == 2 and len(dataset.meta.camera_keys) == 2

    policy, first = reload_and_act(checkpoint, dataset, seed=7)
    _, second = reload_and_act(checkpoint, dataset, seed=7)
    assert first.shape == (1, 6) and torch.isfinite(first).all()
    assert torch.equal(first, second)

    saved = load_file(checkpoint / "model.safetensors")
    assert saved and all(k.startswith(("head.", "image_token_norm.")) for k in saved), "a frozen backbone is not copied into checkpoints"
    for key, value in saved.items():
        assert torch.equal(policy.state_dict()[key], value), key
    info = json.loads((checkpoint / "backbone.json").read_text())
    assert info["vlm_layer"] == 2 and arch.replace("_", "") in info["architecture"].lower().replace("_", "")


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path, tiny_qwen25_backbone, synthetic_dataset):
    root, repo_id = synthetic_dataset
    output_dir = tmp_path / "run"
    run_lerobot("lerobot-train", train_args(root, repo_id, tiny_qwen25_backbone, output_dir, steps=2))
    config_path = output_dir / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    run_lerobot("lerobot-train", [f"--config_path={config_path}", "--resume=true", "--steps=4", "--save_freq=2"])
    state = json.loads((output_dir / "checkpoints" / "last" / "training_state" / "training_step.json").read_text())
    assert state["step"] == 4
    assert (output_dir / "checkpoints" / "000004" / "pretrained_model" / "model.safetensors").is_file()
