"""Fine-tuning a trained roboalign checkpoint with `lerobot-train --policy.path=...` as a user runs it:
LeRobot's --peft, a dataset whose cameras are renamed with --rename_map, and datasets that cannot feed it."""

from pathlib import Path

import pytest
import torch
from lerobot.datasets import LeRobotDataset
from safetensors.torch import load_file
from test_lerobot_train import reload_and_act

from lerobot_roboalign.runner import LeRobotCommandError, run_lerobot

pytestmark = pytest.mark.slow


def finetune_args(checkpoint: Path, dataset: tuple[Path, str], output_dir: Path, steps: int, *extra: str) -> list[str]:
    root, repo_id = dataset
    return [
        f"--policy.path={checkpoint}",
        f"--dataset.repo_id={repo_id}",
        f"--dataset.root={root}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        "--policy.optimizer_lr=1e-3",
        "--policy.scheduler_warmup_steps=1",
        f"--steps={steps}",
        "--batch_size=2",
        f"--save_freq={steps}",
        "--log_freq=1",
        "--num_workers=0",
        f"--output_dir={output_dir}",
        "--wandb.enable=false",
        "--seed=0",
        *extra,
    ]


def test_peft_fine_tuning_through_lerobot_train_saves_adapters_that_reload(
    roboalign_checkpoint, synthetic_dataset, tmp_path
):
    output = tmp_path / "peft"
    run_lerobot("lerobot-train", finetune_args(
        roboalign_checkpoint, synthetic_dataset, output, 2, "--peft.method_type=LORA", "--peft.r=4"
    ))
    checkpoint = output / "checkpoints" / "last" / "pretrained_model"
    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert any("lora_" in k for k in saved) and any(".head." in k for k in saved)
    assert any(".image_token_norm." in k for k in saved), "the image-token statistics it trained with"
    assert all("lora_" in k or ".head." in k or ".image_token_norm." in k for k in saved), sorted(saved)[:5]

    dataset = LeRobotDataset(synthetic_dataset[1], root=synthetic_dataset[0])
    policy, first = reload_and_act(checkpoint, dataset, seed=7)
    _, second = reload_and_act(checkpoint, dataset, seed=7)
    _, base = reload_and_act(roboalign_checkpoint, dataset, seed=7)
    assert type(policy).__name__ == "PeftModel" and policy.config.use_peft
    assert torch.isfinite(first).all() and torch.equal(first, second)
    assert not torch.equal(first, base), "the fine-tuned adapters/head were not loaded"


RENAMED = {"top": "front", "side": "wrist"}


def test_fine_tuning_on_a_dataset_with_other_camera_names_works_with_rename_map(
    roboalign_checkpoint, synthetic_dataset_factory, tmp_path
):
    dataset = synthetic_dataset_factory(cameras=tuple(RENAMED))
    rename = ", ".join(f'"observation.images.{a}": "observation.images.{b}"' for a, b in RENAMED.items())
    output = tmp_path / "renamed"
    run_lerobot("lerobot-train", finetune_args(roboalign_checkpoint, dataset, output, 1, f"--rename_map={{{rename}}}"))
    assert (output / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()

    with pytest.raises(LeRobotCommandError) as error:  # the same dataset without the map
        run_lerobot("lerobot-train", finetune_args(roboalign_checkpoint, dataset, tmp_path / "unmapped", 1))
    message = str(error.value)
    assert "The policy expects camera 'observation.images.front'" in message
    assert "--rename_map=" in message and "Creating optimizer" not in message  # refused before training


def test_fine_tuning_on_a_dataset_with_another_state_dimension_is_refused_before_training(
    roboalign_checkpoint, synthetic_dataset_factory, tmp_path
):
    dataset = synthetic_dataset_factory(state_dim=4)
    with pytest.raises(LeRobotCommandError) as error:
        run_lerobot("lerobot-train", finetune_args(roboalign_checkpoint, dataset, tmp_path / "run", 1))
    message = str(error.value)
    assert "'observation.state' has dimension 4 in the dataset but the policy expects 6" in message
    assert "Creating optimizer" not in message
