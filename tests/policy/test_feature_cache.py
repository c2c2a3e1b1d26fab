"""--policy.cache_features: the frozen backbone's features cached per dataset frame, same losses, refused when wrong."""

import json
from pathlib import Path

import pytest
import torch
from lerobot.configs.default import ImageTransformsConfig
from lerobot.datasets import LeRobotDataset
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.policies.factory import make_policy, make_pre_post_processors
from lerobot.transforms import ImageTransforms
from safetensors.torch import load_file

from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
from lerobot_roboalign.feature_cache import refuse_image_transforms
from lerobot_roboalign.runner import TINY_VLM_LAYER, run_lerobot, train_args

# Prompts of different lengths, so that batches are padded and the cache must re-pad frames as the processor does.
TASKS = ("pick up the red cube", "push the blue block all the way to the left side of the table")
DATASET = dict(tasks=TASKS, image_hw=(32, 32), num_episodes=2, episode_length=8)  # 16 frames
BATCHES = ([0, 9, 3, 12], [1, 2, 10, 11], [8, 4])  # frames 0-7: first task, 8-15: second


def make_config(backbone: Path, cache_dir: Path | None, **overrides) -> RoboAlignConfig:
    return RoboAlignConfig(
        vlm_model_name=str(backbone), vlm_layer=TINY_VLM_LAYER, head_hidden_size=64, head_num_layers=2,
        head_num_heads=4, device="cpu", cache_features=cache_dir is not None,
        feature_cache_dir=None if cache_dir is None else str(cache_dir), **overrides,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dataset(synthetic_dataset_factory) -> LeRobotDataset:
    root, repo_id = synthetic_dataset_factory(**DATASET)
    return LeRobotDataset(repo_id, root=root)


def build(config: RoboAlignConfig, dataset: LeRobotDataset, transforms: ImageTransforms | None = None) -> tuple:
    """Policy, preprocessed batches (BATCHES) and a dataset with action chunks, as lerobot-train builds them."""
    torch.manual_seed(0)
    policy = make_policy(config, ds_meta=dataset.meta)
    preprocessor, _ = make_pre_post_processors(config, dataset_stats=dataset.meta.stats)
    chunks = LeRobotDataset(dataset.repo_id, root=dataset.root, image_transforms=transforms,
                            delta_timestamps=resolve_delta_timestamps(config, dataset.meta))  # fmt: skip
    batches = [preprocessor(torch.utils.data.default_collate([chunks[i] for i in frames])) for frames in BATCHES]
    return policy, batches


def train(policy, batches: list[dict], epochs: int) -> tuple[list[float], list[float | None]]:
    """AdamW steps on the same batches each epoch, a fixed seed per step: losses and cache hits."""
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=1e-3)
    policy.train()
    losses, hits = [], []
    for step, batch in enumerate(batches * epochs):
        torch.manual_seed(step)
        loss, info = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        hits.append(info.get("feature_cache_hit"))
    return losses, hits


def count_backbone_calls(policy) -> list:
    """A list that grows by one each time the policy runs its backbone."""
    calls, forward = [], policy.backbone.forward

    def counted(*args):
        calls.append(1)
        return forward(*args)

    policy.backbone.forward = counted
    return calls


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: a frozen backbone on a GPU (auto)
def test_cached_features_give_bit_identical_losses_and_skip_the_backbone(
    dtype, tiny_qwen25_backbone, dataset, tmp_path
):
    plain, batches = build(make_config(tiny_qwen25_backbone, None, backbone_dtype=dtype), dataset)
    expected, _ = train(plain, batches, epochs=2)

    cached, batches = build(make_config(tiny_qwen25_backbone, tmp_path, backbone_dtype=dtype), dataset)
    calls = count_backbone_calls(cached)
    losses, hits = train(cached, batches, epochs=2)
    assert losses == expected  # exactly: filled from the backbone, then read back
    assert hits == [0.0] * 3 + [1.0] * 3 and len(calls) == 3, "the second epoch must not run the backbone"
    for key, value in plain.state_dict().items():
        assert torch.equal(cached.state_dict()[key], value), key

    again, batches = build(make_config(tiny_qwen25_backbone, tmp_path, backbone_dtype=dtype), dataset)  # new run
    calls = count_backbone_calls(again)
    assert train(again, batches, epochs=1) == (expected[:3], [1.0] * 3) and not calls


def test_augmented_pixels_or_changed_task_are_refused(tiny_qwen25_backbone, dataset, tmp_path):
    config = make_config(tiny_qwen25_backbone, tmp_path)
    policy, batches = build(config, dataset)
    train(policy, batches[:1], epochs=1)

    _, augmented = build(config, dataset, ImageTransforms(ImageTransformsConfig(enable=True)))
    with pytest.raises(ValueError, match=r"frame \d+: its pixels differ.*--dataset.image_transforms.enable=false"):
        policy.forward(augmented[0])

    renamed = {**batches[0], "task": ["pick up the blue cube"] + batches[0]["task"][1:]}
    with pytest.raises(ValueError, match="task text .'pick up the blue cube'. differ"):
        policy.forward(renamed)


def test_another_backbone_fingerprint_does_not_reuse_features(tiny_qwen25_backbone, dataset, tmp_path):
    config = make_config(tiny_qwen25_backbone, tmp_path)
    policy, batches = build(config, dataset)
    train(policy, batches[:1], epochs=1)

    retemplated, _ = build(make_config(tiny_qwen25_backbone, tmp_path, prompt_template="Do: {task}{state}"), dataset)
    assert train(retemplated, batches[:1], epochs=1)[1] == [0.0]
    changed, _ = build(config, dataset)
    with torch.no_grad():
        changed.backbone.vlm.language_model.layers[0].mlp.up_proj.weight[0, 0] += 1e-4  # e.g. more SFT
    assert train(changed, batches[:1], epochs=1)[1] == [0.0]
    assert len(list(tmp_path.iterdir())) == 3  # one cache directory per fingerprint
    same, _ = build(config, dataset)
    assert train(same, batches[:1], epochs=1)[1] == [1.0]


def test_cache_refusals_name_the_fix(tiny_qwen25_backbone, dataset, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--policy.backbone_mode=frozen"):
        make_config(tiny_qwen25_backbone, tmp_path, backbone_mode="lora")

    refuse_image_transforms(["--dataset.image_transforms.enable=false"])
    with pytest.raises(ValueError, match="--dataset.image_transforms.enable=false"):
        refuse_image_transforms(["--dataset.image_transforms.enable=true"])
    train_config = tmp_path / "train_config.json"  # a resumed run reads the flag from its saved train config
    train_config.write_text(json.dumps({"dataset": {"image_transforms": {"enable": True}}}))
    with pytest.raises(ValueError, match="image augmentation"):
        refuse_image_transforms([f"--config_path={train_config}", "--resume=true"])
    monkeypatch.setattr("sys.argv", ["lerobot-train", "--dataset.image_transforms.enable=true"])
    with pytest.raises(ValueError, match="image augmentation"):  # before training starts
        make_policy(make_config(tiny_qwen25_backbone, tmp_path), ds_meta=dataset.meta)
    monkeypatch.setattr("sys.argv", ["lerobot-train"])

    policy, batches = build(make_config(tiny_qwen25_backbone, tmp_path), dataset)
    with pytest.raises(KeyError, match="no 'index'"):
        policy.forward({k: v for k, v in batches[0].items() if k != "index"})


@pytest.mark.slow
def test_lerobot_train_with_cache_matches_and_resumes_on_it(
    tiny_qwen25_backbone, synthetic_dataset_factory, tmp_path
):
    """One epoch (4 steps of 4 frames) with and without the cache ends on bit-identical heads; a resumed run
    trains its second epoch from the cache alone."""
    root, repo_id = synthetic_dataset_factory(**DATASET)
    cache = ("--policy.cache_features=true", f"--policy.feature_cache_dir={tmp_path / 'cache'}")
    run_lerobot("lerobot-train", train_args(root, repo_id, tiny_qwen25_backbone, tmp_path / "plain", steps=4))
    run_lerobot("lerobot-train", train_args(root, repo_id, tiny_qwen25_backbone, tmp_path / "cached", steps=4,
                                            extra=cache))  # fmt: skip
    weights = [load_file(tmp_path / run / "checkpoints/last/pretrained_model/model.safetensors")
               for run in ("plain", "cached")]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])

    config_path = tmp_path / "cached/checkpoints/last/pretrained_model/train_config.json"
    output = run_lerobot("lerobot-train", [f"--config_path={config_path}", "--resume=true", "--steps=8"])
    hits = [line.split("feature_cache_hit:")[1].split()[0] for line in output.splitlines()
            if "feature_cache_hit:" in line]  # fmt: skip
    assert hits and all(hit == "1.000" for hit in hits), output[-2000:]
