"""A small, learnable LeRobotDataset v3 written locally, for tests and the offline demo.

Hub datasets cannot be downloaded here, so tests write their own with LeRobot's recording API
(``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` / ``finalize``) and read it back
with ``LeRobotDataset(repo_id, root=...)`` like any other. The data is made to be learnable:
each task has its own smooth action trajectory (sinusoids whose phase and drift direction depend
on the task), the state trails the action, and each camera shows a coloured square that follows
the state, so images, state and instruction all carry the signal a policy needs, and the smooth
actions compress well under FAST's DCT.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

SQUARE_COLORS = np.array([[230, 40, 40], [40, 90, 230], [40, 200, 60], [230, 200, 40]], dtype=np.uint8)


def dataset_features(cameras: tuple[str, ...], image_hw: tuple[int, int], state_dim: int,
                     action_dim: int, video: bool = False) -> dict:
    features = {
        f"observation.images.{cam}": {"dtype": "video" if video else "image", "shape": (*image_hw, 3),
                                      "names": ["height", "width", "channels"]}
        for cam in cameras
    }
    features["observation.state"] = {"dtype": "float32", "shape": (state_dim,),
                                     "names": [f"joint_{i}" for i in range(state_dim)]}
    features["action"] = {"dtype": "float32", "shape": (action_dim,),
                          "names": [f"joint_{i}" for i in range(action_dim)]}
    return features


def task_trajectory(task_index: int, length: int, action_dim: int, rng: np.random.Generator) -> np.ndarray:
    """(length, action_dim) smooth actions: per-task phase and drift, small per-episode jitter."""
    t = np.linspace(0.0, 1.0, length)[:, None]
    dims = np.arange(action_dim)[None, :]
    phase = task_index * np.pi / 2 + dims * 0.7 + rng.normal(0.0, 0.1)
    drift = (1.0 if task_index % 2 == 0 else -1.0) * (0.3 + 0.1 * dims)
    amplitude = 0.5 * (1.0 + 0.1 * rng.normal())
    return (amplitude * np.sin(2 * np.pi * (1 + dims % 2) * t + phase) + drift * t).astype(np.float32)


def render_camera(state: np.ndarray, camera_index: int, task_index: int,
                  image_hw: tuple[int, int]) -> np.ndarray:
    """A dark frame with a square whose position follows two state dimensions (different per camera)."""
    height, width = image_hw
    image = np.full((height, width, 3), 20, dtype=np.uint8)
    side = max(2, min(height, width) // 6)
    x_dim, y_dim = (2 * camera_index) % len(state), (2 * camera_index + 1) % len(state)
    cx = int(np.clip((np.tanh(state[x_dim]) + 1) / 2 * (width - side), 0, width - side))
    cy = int(np.clip((np.tanh(state[y_dim]) + 1) / 2 * (height - side), 0, height - side))
    image[cy:cy + side, cx:cx + side] = SQUARE_COLORS[task_index % len(SQUARE_COLORS)]
    return image


def is_complete(root: Path, num_episodes: int) -> bool:
    info = root / "meta" / "info.json"
    return info.is_file() and json.loads(info.read_text()).get("total_episodes") == num_episodes


def write_synthetic_dataset(
    root: Path,
    repo_id: str = "local/synthetic",
    *,
    cameras: tuple[str, ...] = ("front", "wrist"),
    image_hw: tuple[int, int] = (64, 64),
    state_dim: int = 6,
    action_dim: int = 6,
    tasks: tuple[str, ...] = ("pick up the red cube", "push the blue block left"),
    num_episodes: int = 4,
    episode_length: int = 40,
    fps: int = 10,
    seed: int = 0,
    video: bool = False,  # cameras as MP4 videos (LeRobot's encoder), as recorded datasets store them
) -> LeRobotDataset:
    """Write (or reuse, if already complete) a synthetic dataset at ``root`` and return it, read back."""
    root = Path(root)
    if not tasks:
        raise ValueError("write_synthetic_dataset needs at least one task, e.g. tasks=('pick up the cube',).")
    if root.exists() and not is_complete(root, num_episodes):
        raise FileExistsError(f"{root} exists but is not a complete {num_episodes}-episode dataset; "
                              "delete it or choose another root.")
    if not root.exists():
        staging = root.with_name(f".{root.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
        record(staging, repo_id, cameras, image_hw, state_dim, action_dim, tasks, num_episodes,
               episode_length, fps, seed, video)
        staging.rename(root)
    return LeRobotDataset(repo_id, root=root)


def record(root: Path, repo_id: str, cameras: tuple[str, ...], image_hw: tuple[int, int], state_dim: int,
           action_dim: int, tasks: tuple[str, ...], num_episodes: int, episode_length: int, fps: int,
           seed: int, video: bool = False) -> None:
    """Record the episodes with LeRobot's writer; tasks alternate across episodes."""
    rng = np.random.default_rng(seed)
    features = dataset_features(tuple(cameras), tuple(image_hw), state_dim, action_dim, video)
    dataset = LeRobotDataset.create(repo_id, fps=fps, features=features, root=root, robot_type="synthetic",
                                    use_videos=video)
    for episode in range(num_episodes):
        task_index = episode % len(tasks)
        actions = task_trajectory(task_index, episode_length, action_dim, rng)
        state = np.zeros(state_dim, dtype=np.float32)
        for action in actions:
            frame = {f"observation.images.{cam}": render_camera(state, i, task_index, image_hw)
                     for i, cam in enumerate(cameras)}
            frame.update({"observation.state": state.copy(), "action": action, "task": tasks[task_index]})
            dataset.add_frame(frame)
            state = np.resize(action, state_dim) + rng.normal(0.0, 0.01, state_dim).astype(np.float32)
        dataset.save_episode()
    dataset.finalize()
