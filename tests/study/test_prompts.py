"""The study refuses to train heads unless alignment and the VLA render the same prompt for each backbone."""

import shutil

import pytest

from lerobot_roboalign.alignment_format import AlignmentFormat
from lerobot_roboalign.study.prompts import check_prompts

TASKS = ["pick up the cube and place it on the left"]


def aligned_copy(backbone, directory, **fmt):
    shutil.copytree(backbone, directory)
    AlignmentFormat(**fmt).save_pretrained(directory)
    return str(directory)


def test_same_prompt_passes_and_state_text_is_refused(tiny_qwen25_backbone, tmp_path):
    aligned = aligned_copy(tiny_qwen25_backbone, tmp_path / "aligned", image_size=96)
    checked = check_prompts({"base": str(tiny_qwen25_backbone), "sft": aligned}, TASKS, 1, 14, 96)
    assert "Task: pick up the cube and place it on the left." in checked["prompt"]
    with_state = aligned_copy(tiny_qwen25_backbone, tmp_path / "state", image_size=96, include_state=True)
    with pytest.raises(ValueError, match="(?s)row sft: the VLA.s prompt differs.*--state_text=false"):
        check_prompts({"base": str(tiny_qwen25_backbone), "sft": with_state}, TASKS, 1, 14, 96)
    with pytest.raises(ValueError, match="aligned at 64px, the VLA sees 96px"):
        check_prompts(
            {"sft": aligned_copy(tiny_qwen25_backbone, tmp_path / "small", image_size=64)}, TASKS, 1, 14, 96
        )
