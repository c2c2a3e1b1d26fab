"""GRPO sharded over 2 CPU ranks (FSDP, KL term on): rewards vary, the weights move, the saved model is the trained one.

The launch is the sharded-save tests' (tests/align/sharded_launch.py: accelerate keeps FSDP on gloo CPU ranks) with
a reward stub through TRL's reward_funcs interface, because an untrained tiny model never writes an action span.
"""

import csv
import json
from pathlib import Path

import pytest
import torch

from lerobot_roboalign.runner import run_lerobot

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[2] / "examples" / "accelerate"
SHARDED_LAUNCH = Path(__file__).parent / "sharded_launch.py"


def parameters(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto")
    return {name: param.detach() for name, param in model.named_parameters()}


def sharded_grpo(backbone: Path, data: tuple[Path, str], output: Path, beta: float, monkeypatch) -> str:
    """Two GRPO steps of 2 prompts x 2 completions per rank under examples/accelerate/fsdp.yaml on 2 CPU ranks."""
    root, repo_id = data
    (output / "shards").mkdir(parents=True)
    for name, value in {"ACCELERATE_USE_CPU": "true", "SHARDS_DIR": str(output / "shards"), "REWARD_STUB": "1"}.items():
        monkeypatch.setenv(name, value)
    return run_lerobot("accelerate", [
        "launch", "--config_file", str(EXAMPLES / "fsdp.yaml"), "--num_processes=2", "--mixed_precision=no",
        str(SHARDED_LAUNCH), "align", "grpo", f"--model.path={backbone}", f"--dataset.repo_ids=[{repo_id}]",
        f"--dataset.roots=[{root}]", "--dataset.cameras=[front]", "--dataset.chunk_size=2", "--dataset.num_samples=8",
        f"--training.output_dir={output / 'run'}", "--training.max_steps=2", "--training.per_device_train_batch_size=2",
        "--training.learning_rate=1e-4", "--training.logging_steps=1", "--training.save_steps=2",
        "--grpo.num_generations=2", "--grpo.max_completion_length=8", f"--grpo.beta={beta}",
    ], timeout=600)


def test_fsdp_grpo_with_kl_moves_the_weights_and_saves_the_trained_model(
    extended_dir, synthetic_dataset_factory, tmp_path, monkeypatch
):
    data = synthetic_dataset_factory(action_dim=2, state_dim=2, num_episodes=2, episode_length=12)
    sharded_grpo(extended_dir, data, tmp_path, beta=0.01, monkeypatch=monkeypatch)
    with (tmp_path / "run" / "metrics.csv").open() as file:
        logged = [row for row in csv.DictReader(file) if row.get("loss")]
    assert len(logged) == 2
    assert all(float(row["reward_std"]) > 0 for row in logged)  # the completions of a prompt scored differently
    assert all(float(row["grad_norm"]) > 0 for row in logged)
    assert all(torch.isfinite(torch.tensor(float(row["kl"]))) for row in logged)
    ranks = [torch.load(tmp_path / "shards" / f"rank{i}.pt") for i in range(2)]
    saved = parameters(tmp_path / "run" / "model")
    base = parameters(extended_dir)
    changed = 0
    for name, weight in saved.items():
        parts = [rank[name] for rank in ranks]
        trained = parts[0] if parts[0].shape == weight.shape else torch.cat(parts)  # FSDP shards rows of dim 0
        torch.testing.assert_close(weight, trained, rtol=0, atol=0, msg=name)
        changed += not torch.equal(weight, base[name].float())
    assert changed > len(saved) // 2, f"only {changed} of {len(saved)} parameters moved"
    assert json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
