"""Alignment samples of a video dataset are lazy too: no frame is decoded before a row is read, and a read row's
images are the frames LeRobot's own decoder gives for that timestamp."""

import numpy as np
import pytest
import torch

from lerobot_roboalign.align.data import AlignDataConfig, load_samples


@pytest.fixture(scope="module")
def video_config(tmp_path_factory) -> AlignDataConfig:
    from lerobot_roboalign.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("video") / "dataset"
    dataset = write_synthetic_dataset(root, cameras=("front",), image_hw=(32, 32), action_dim=2, state_dim=2,
                                      num_episodes=2, episode_length=12, video=True)
    assert dataset.meta.video_keys == ["observation.images.front"]
    return AlignDataConfig(repo_ids=[dataset.repo_id], roots=[str(root)], cameras=["front"], chunk_size=2, num_samples=6)


def test_video_frames_decode_only_when_a_row_is_read(video_config, extended_backbone, monkeypatch):
    import lerobot.datasets.dataset_reader as reader
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from lerobot_roboalign.align.grpo import build_dataset

    decoded = []
    decode = reader.decode_video_frames
    monkeypatch.setattr(reader, "decode_video_frames",
                        lambda path, timestamps, *a, **k: decoded.append(list(timestamps)) or decode(path, timestamps, *a, **k))
    samples = load_samples(video_config, extended_backbone[3])
    rows = build_dataset(samples)
    assert len(rows) == 6 and decoded == []  # samples and GRPO rows are references
    [row] = rows.__getitems__([4])
    assert len(decoded) == 1  # that row's one camera frame, no more

    reference = LeRobotDataset(video_config.repo_ids[0], root=video_config.roots[0])
    frame = reference[int(samples.frame_of[4])]["observation.images.front"]  # CHW float in [0, 1]
    expected = (frame.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_allclose(np.asarray(row["images"][0]), expected, atol=1)
