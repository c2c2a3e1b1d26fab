"""Shared fixtures: tiny VLM checkpoints and synthetic LeRobotDatasets, built once per session."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("MUJOCO_GL", "egl")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

import lerobot_roboalign  # noqa: E402

lerobot_roboalign.register()  # as LeRobot's plugin discovery does in every lerobot-* command


@pytest.fixture(scope="session")
def tiny_backbone_factory(tmp_path_factory) -> Callable[[str], Path]:
    """``factory(arch)`` -> path of a tiny random checkpoint of ``arch``, written once per session."""
    from lerobot_roboalign.tiny_backbone import make_tiny_backbone

    root = tmp_path_factory.mktemp("tiny_backbones")
    return lambda arch="qwen2_5_vl": make_tiny_backbone(root / arch, arch)


@pytest.fixture(scope="session")
def tiny_qwen25_backbone(tiny_backbone_factory) -> Path:
    return tiny_backbone_factory("qwen2_5_vl")


@pytest.fixture(scope="session")
def synthetic_dataset_factory(tmp_path_factory) -> Callable[..., tuple[Path, str]]:
    """``factory(**kwargs)`` -> (root, repo_id) of a synthetic dataset, one per distinct kwargs."""
    from lerobot_roboalign.synthetic import write_synthetic_dataset

    base = tmp_path_factory.mktemp("synthetic_datasets")
    cache: dict[str, tuple[Path, str]] = {}

    def factory(**kwargs) -> tuple[Path, str]:
        key = repr(sorted(kwargs.items()))
        if key not in cache:
            root = base / f"dataset_{len(cache)}"
            dataset = write_synthetic_dataset(root, **kwargs)
            cache[key] = (root, dataset.repo_id)
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def synthetic_dataset(synthetic_dataset_factory) -> tuple[Path, str]:
    return synthetic_dataset_factory()


@pytest.fixture(scope="session")
def roboalign_checkpoint_factory(
    tmp_path_factory, tiny_backbone_factory, synthetic_dataset_factory
) -> Callable[..., Path]:
    """``factory(arch, steps, **dataset_kwargs)`` -> ``pretrained_model`` dir trained by ``lerobot-train``.

    ``dataset_kwargs`` go to ``write_synthetic_dataset`` (e.g. LIBERO's camera names and sizes).
    """
    from lerobot_roboalign.runner import run_lerobot, train_args

    cache: dict[str, Path] = {}

    def factory(arch: str = "qwen2_5_vl", steps: int = 2, **dataset_kwargs) -> Path:
        key = repr((arch, steps, sorted(dataset_kwargs.items())))
        if key not in cache:
            output_dir = tmp_path_factory.mktemp("train") / f"{arch}_{steps}"
            root, repo_id = synthetic_dataset_factory(**dataset_kwargs)
            run_lerobot("lerobot-train", train_args(root, repo_id, tiny_backbone_factory(arch), output_dir, steps))
            cache[key] = output_dir / "checkpoints" / "last" / "pretrained_model"
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def roboalign_checkpoint(roboalign_checkpoint_factory) -> Path:
    """A roboalign checkpoint (tiny Qwen2.5-VL backbone, two cameras, 6-D state/action) from lerobot-train."""
    return roboalign_checkpoint_factory()


@pytest.fixture(scope="session")
def calvin_checkpoint(roboalign_checkpoint_factory) -> Path:
    """A roboalign checkpoint from lerobot-train (1 step) on a dataset with CALVIN's 15-D state and 7-D action."""
    return roboalign_checkpoint_factory(
        steps=1,
        cameras=("image", "image2"),
        image_hw=(32, 32),
        state_dim=15,
        action_dim=7,
        num_episodes=2,
        episode_length=8,
    )
