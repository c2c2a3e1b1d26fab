"""Model and trainer options of the alignment commands: attention kernel, data loader workers, unreachable models."""

import draccus
import pytest
import torch

from lerobot_roboalign.align.common import load_model_and_processor
from lerobot_roboalign.align.config import ModelConfig, TrainingConfig
from lerobot_roboalign.align.grpo import AlignGRPOConfig, grpo_args
from lerobot_roboalign.align.sft import AlignSFTConfig


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_attn_implementation_reaches_the_model_and_the_grpo_reference(kernel, tiny_qwen25_backbone):
    argv = [f"--model.path={tiny_qwen25_backbone}"] + ([f"--model.attn_implementation={kernel}"] if kernel != "sdpa" else [])
    cfg = draccus.parse(config_class=AlignSFTConfig, args=argv)
    model, _ = load_model_and_processor(cfg.model)
    assert model.config._attn_implementation == kernel
    grpo = draccus.parse(config_class=AlignGRPOConfig, args=argv)
    assert grpo_args(grpo).model_init_kwargs["attn_implementation"] == kernel


def test_flash_attention_without_the_package_names_the_fix():
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is installed here")
    with pytest.raises(Exception, match="pip install flash-attn"):
        ModelConfig(attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="choose one of"):
        ModelConfig(attn_implementation="flash")


def test_dataloader_workers_flag_and_default():
    cfg = draccus.parse(config_class=AlignSFTConfig, args=["--training.dataloader_num_workers=3"])
    plan = cfg.model.precision()
    assert cfg.training.trainer_kwargs(plan)["dataloader_num_workers"] == 3
    expected = 2 if torch.cuda.is_available() else 0  # a GPU trains while the workers decode; a CPU has no spare cores
    assert TrainingConfig().trainer_kwargs(plan)["dataloader_num_workers"] == expected


def test_reason_with_a_hub_id_offline_says_what_to_pass(align_dataset, tmp_path, monkeypatch):
    from lerobot_roboalign.align import reason

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, repo_id = align_dataset
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE=1.*Fix: pass --model_path="):
        reason.main([f"--dataset.repo_ids=[{repo_id}]", f"--dataset.roots=[{root}]", "--dataset.num_samples=2",
                     "--model_path=someone/not-downloaded-VL-7B", f"--output={tmp_path / 'r.jsonl'}"])
