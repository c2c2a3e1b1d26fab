"""make_roboalign_pre_post_processors: normalisation modes, validation step, save/reload."""

import pytest
import torch
from lerobot.configs import NormalizationMode
from lerobot.datasets import LeRobotDataset
from lerobot.processor import PolicyProcessorPipeline
from lerobot.utils.feature_utils import dataset_to_policy_features

from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
from lerobot_roboalign.processor_roboalign import make_roboalign_pre_post_processors


def config_for(dataset: LeRobotDataset, mode: NormalizationMode) -> RoboAlignConfig:
    features = dataset_to_policy_features(dataset.meta.features)
    return RoboAlignConfig(
        device="cpu",
        input_features={k: f for k, f in features.items() if k.startswith("observation.")},
        output_features={"action": features["action"]},
        normalization_mapping={"VISUAL": NormalizationMode.IDENTITY, "STATE": mode, "ACTION": mode},
    )


def dataset_batch(dataset: LeRobotDataset) -> dict:
    frames = [dataset[i] for i in range(0, len(dataset), 7)]
    batch = {k: torch.stack([f[k] for f in frames]) for k in frames[0] if isinstance(frames[0][k], torch.Tensor)}
    batch["task"] = [f["task"] for f in frames]
    return batch


@pytest.mark.parametrize("mode", [NormalizationMode.MEAN_STD, NormalizationMode.QUANTILES])
def test_normalises_with_dataset_stats_and_round_trips(synthetic_dataset, mode, tmp_path):
    root, repo_id = synthetic_dataset
    dataset = LeRobotDataset(repo_id, root=root)
    config = config_for(dataset, mode)
    pre, post = make_roboalign_pre_post_processors(config, dataset_stats=dataset.meta.stats)
    batch = dataset_batch(dataset)
    out = pre(dict(batch))
    action = out["action"]
    stats = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in dataset.meta.stats["action"].items()}
    if mode == NormalizationMode.QUANTILES:
        expected = 2 * (batch["action"] - stats["q01"]) / (stats["q99"] - stats["q01"]) - 1
    else:
        expected = (batch["action"] - stats["mean"]) / stats["std"]
    assert torch.allclose(action, expected, atol=1e-4)
    assert not torch.allclose(action, batch["action"])
    assert torch.allclose(post(action), batch["action"], atol=1e-4)

    pre.save_pretrained(tmp_path)
    reloaded = PolicyProcessorPipeline.from_pretrained(tmp_path, config_filename="policy_preprocessor.json")
    assert torch.allclose(reloaded(dict(batch))["action"], action)


def test_validation_step_runs_before_normalisation(synthetic_dataset):
    root, repo_id = synthetic_dataset
    dataset = LeRobotDataset(repo_id, root=root)
    pre, _ = make_roboalign_pre_post_processors(config_for(dataset, NormalizationMode.MEAN_STD), dataset.meta.stats)
    batch = dataset_batch(dataset)
    batch["observation.state"] = batch["observation.state"][:, :4]
    with pytest.raises(ValueError, match="'observation.state' has dimension 4 but the policy expects 6"):
        pre(batch)
