"""`align sft --model.fast_tokenizer` on a backbone that already has action tokens (issue 10, item 9)."""

from pathlib import Path

import numpy as np
import pytest

from lerobot_roboalign.align import sft
from lerobot_roboalign.align.common import ModelConfig
from lerobot_roboalign.fast import FastTokenizer


def other_fast(tmp_path: Path) -> Path:
    chunks = np.random.default_rng(1).uniform(-1, 1, size=(64, 2, 2)) * np.array([1.0, 0.3])
    return FastTokenizer.fit(chunks, vocab_size=48).save_pretrained(tmp_path / "other_fast")


def test_sft_refuses_a_fast_tokenizer_other_than_the_backbones(extended_dir, align_data_config, tmp_path):
    argv = [
        f"--model.path={extended_dir}",
        f"--model.fast_tokenizer={other_fast(tmp_path)}",
        f"--dataset.repo_ids=[{align_data_config.repo_ids[0]}]",
        f"--dataset.roots=[{align_data_config.roots[0]}]",
        f"--training.output_dir={tmp_path / 'run'}",
    ]
    with pytest.raises(ValueError, match="differs from the FAST tokenizer") as error:
        sft.main(argv)
    assert "drop --model.fast_tokenizer" in str(error.value)
    assert not (tmp_path / "run" / "model").exists()


def test_the_backbones_own_fast_tokenizer_is_accepted(extended_dir):
    own = str(extended_dir / "fast_tokenizer")
    sft.refuse_other_fast_tokenizer(ModelConfig(path=str(extended_dir), fast_tokenizer=own), str(extended_dir))


def test_a_backbone_without_action_tokens_takes_any_fast_tokenizer(tiny_qwen25_backbone, tmp_path):
    given = ModelConfig(path=str(tiny_qwen25_backbone), fast_tokenizer=str(other_fast(tmp_path)))
    sft.refuse_other_fast_tokenizer(given, str(tiny_qwen25_backbone))


def test_sft_uses_the_tokenizer_fit_output_instead_of_fitting_one(tiny_qwen25_backbone, align_data_config, tmp_path,
                                                                  monkeypatch):
    """`roboalign tokenizer fit --output_dir=DIR` then `align sft --model.fast_tokenizer=DIR` (as the demo runs)."""
    from lerobot_roboalign.cli import main

    fitted = main([
        "tokenizer", "fit", f"--dataset.repo_ids=[{align_data_config.repo_ids[0]}]",
        f"--dataset.roots=[{align_data_config.roots[0]}]", "--chunk_size=2", "--vocab_size=40", "--scale=4",
        f"--output_dir={tmp_path / 'fast'}",
    ]) or tmp_path / "fast"

    def no_fitting(*args, **kwargs):
        raise AssertionError("align sft fitted its own FAST tokenizer")

    monkeypatch.setattr(FastTokenizer, "fit", no_fitting)
    cfg = sft.AlignSFTConfig(dataset=align_data_config,
                             model=ModelConfig(path=str(tiny_qwen25_backbone), fast_tokenizer=str(fitted)))
    samples, fast = sft.samples_with_tokens(cfg, cfg.model.path)
    assert (fast.vocab_size, fast.scale) == (40, 4.0)
    assert all(s["fast_tokens"] for s in samples)
