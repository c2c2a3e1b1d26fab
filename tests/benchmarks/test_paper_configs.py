"""The paper's training configurations parse with LeRobot's own TrainPipelineConfig loader."""

from pathlib import Path

import pytest
from lerobot.configs.train import TrainPipelineConfig

import lerobot_roboalign  # noqa: F401  (registers --policy.type=roboalign)
from lerobot_roboalign import RoboAlignConfig

PAPER = Path(__file__).parents[2] / "examples" / "paper"
# name: (dataset, training steps) from the paper; all: Qwen2.5-VL-7B, layer 18, chunk 16, batch 32.
EXPECTED = {
    "libero": ("HuggingFaceVLA/libero", 60_000),
    "calvin": ("InternRobotics/InternData-Calvin_ABC", 100_000),
    "real_robot": ("your-name/franka_pick_place", 30_000),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_config_parses(name):
    cfg = TrainPipelineConfig.from_pretrained(str(PAPER / f"{name}.json"), cli_args=["--policy.device=cpu"])
    repo_id, steps = EXPECTED[name]
    assert isinstance(cfg.policy, RoboAlignConfig)
    assert cfg.dataset.repo_id == repo_id
    assert (cfg.steps, cfg.batch_size, cfg.policy.scheduler_decay_steps) == (steps, 32, steps)
    assert cfg.policy.vlm_model_name == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (cfg.policy.vlm_layer, cfg.policy.chunk_size, cfg.policy.num_inference_steps) == (18, 16, 4)


def test_command_line_overrides_the_file():
    cfg = TrainPipelineConfig.from_pretrained(
        str(PAPER / "libero.json"), cli_args=["--policy.vlm_model_name=outputs/align/grpo/model", "--steps=10"]
    )
    assert (cfg.policy.vlm_model_name, cfg.steps) == ("outputs/align/grpo/model", 10)
