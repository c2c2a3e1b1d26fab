"""Fixtures of the alignment tests: a tiny backbone extended with a small FAST action vocabulary."""

from pathlib import Path

import numpy as np
import pytest

from lerobot_roboalign.align.data import AlignDataConfig


@pytest.fixture(scope="session")
def align_dataset(synthetic_dataset_factory) -> tuple[Path, str]:
    """Two short episodes with 2-D actions: FAST chunks of 2 steps are a few tokens long."""
    return synthetic_dataset_factory(action_dim=2, state_dim=2, num_episodes=2, episode_length=12)


@pytest.fixture(scope="session")
def align_data_config(align_dataset) -> AlignDataConfig:
    root, repo_id = align_dataset
    return AlignDataConfig(repo_ids=[repo_id], roots=[str(root)], cameras=["front"], chunk_size=2, num_samples=4)


@pytest.fixture(scope="session")
def extended_backbone(tiny_qwen25_backbone):
    """(model, tokenizer, vocabulary, fast) of the tiny backbone with 2-step x 2-D FAST action tokens."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from lerobot_roboalign.action_vocab import ActionVocabulary
    from lerobot_roboalign.fast import FastTokenizer

    chunks = np.random.default_rng(0).uniform(-1, 1, size=(64, 2, 2))
    fast = FastTokenizer.fit(chunks, vocab_size=64)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen25_backbone)
    processor = AutoProcessor.from_pretrained(tiny_qwen25_backbone)
    vocabulary = ActionVocabulary.extend(model, processor.tokenizer, fast)
    return model, processor, vocabulary, fast, chunks


@pytest.fixture(scope="session")
def extended_dir(extended_backbone, tmp_path_factory) -> Path:
    """The tiny backbone with action tokens (untrained), saved like the output of `align sft`."""
    model, processor, vocabulary, _, _ = extended_backbone
    path = tmp_path_factory.mktemp("extended")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    vocabulary.save_pretrained(path)
    return path
