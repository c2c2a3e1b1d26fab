import numpy as np
import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from scipy.fft import dct

from lerobot_roboalign.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(synthetic_dataset) -> LeRobotDataset:
    root, repo_id = synthetic_dataset
    return LeRobotDataset(repo_id, root=root)


def column(dataset: LeRobotDataset, name: str) -> np.ndarray:
    return np.stack(dataset.hf_dataset.with_format("numpy")[name])


def episode_actions(dataset: LeRobotDataset, episode: int) -> np.ndarray:
    return column(dataset, "action")[column(dataset, "episode_index") == episode]


def test_reloads_with_expected_features_and_episodes(dataset):
    assert dataset.num_episodes == 4 and dataset.num_frames == 4 * 40 and dataset.fps == 10
    assert {"observation.images.front", "observation.images.wrist", "observation.state", "action"} <= set(
        dataset.features)
    assert dataset.features["observation.images.front"]["shape"] == (64, 64, 3)
    frame = dataset[0]
    assert frame["observation.images.wrist"].shape == (3, 64, 64)
    assert frame["action"].shape == (6,) and frame["observation.state"].shape == (6,)


def test_tasks_alternate_across_episodes(dataset):
    tasks = [dataset[int(i) * 40]["task"] for i in range(4)]
    assert tasks == ["pick up the red cube", "push the blue block left"] * 2


def test_actions_are_smooth_task_dependent_and_state_trails_them(dataset):
    same_task = np.abs(episode_actions(dataset, 0) - episode_actions(dataset, 2)).mean()
    other_task = np.abs(episode_actions(dataset, 0) - episode_actions(dataset, 1)).mean()
    assert other_task > 3 * same_task
    actions = episode_actions(dataset, 1)
    energy = dct(actions, axis=0, norm="ortho") ** 2
    assert energy[:8].sum() > 0.95 * energy.sum()  # smooth: DCT energy in the lowest coefficients
    states = column(dataset, "observation.state")[column(dataset, "episode_index") == 1]
    np.testing.assert_allclose(states[1:], actions[:-1], atol=0.05)


def test_images_follow_the_state(dataset):
    first, later = dataset[40], dataset[60]
    assert not torch.equal(first["observation.images.front"], later["observation.images.front"])
    assert first["observation.images.front"].std() > 0.05


def test_complete_dataset_is_reused_and_partial_refused(synthetic_dataset, tmp_path):
    root, repo_id = synthetic_dataset
    before = sorted(p.stat().st_mtime_ns for p in root.rglob("*.parquet"))
    assert write_synthetic_dataset(root, repo_id).num_episodes == 4
    assert sorted(p.stat().st_mtime_ns for p in root.rglob("*.parquet")) == before
    (tmp_path / "half").mkdir()
    with pytest.raises(FileExistsError, match="not a complete"):
        write_synthetic_dataset(tmp_path / "half")
