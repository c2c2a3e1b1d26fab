"""Sharing decisions, offline: what an aligned-MLLM push uploads, and how a pushed policy names its backbone.

The Hub cannot be reached here, so these tests check the decisions (files, references, refusals) and the
files a policy push would write, not an upload.
"""

import json
import shutil
import sys
from pathlib import Path

import draccus
import pytest
from lerobot.datasets import LeRobotDatasetMetadata

from lerobot_roboalign.align.grpo import AlignGRPOConfig
from lerobot_roboalign.align.sft import AlignSFTConfig
from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
from lerobot_roboalign.hub import (
    HUB_RECORD_FILE,
    backbone_reference,
    plan_backbone_push,
    record_backbone_push,
    shared_backbone_name,
)
from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

sys.path.insert(0, str(Path(__file__).parent / "policy"))
from test_policy import make_config  # noqa: E402


@pytest.fixture
def aligned_dir(tiny_qwen25_backbone, tmp_path) -> Path:
    """A final aligned-model directory as `save_final` leaves it, with a staging leftover beside the files."""
    model = tmp_path / "grpo" / "model"
    shutil.copytree(tiny_qwen25_backbone, model)
    (model / "fast_tokenizer").mkdir()
    (model / "fast_tokenizer" / "processor_config.json").write_text("{}")
    (model / "action_vocab.json").write_text("{}")
    (model / ".model.old").mkdir()
    (model / ".model.old" / "model.safetensors").write_text("stale")
    return model


def test_plan_uploads_the_loadable_model_with_its_action_vocabulary_and_nothing_else(aligned_dir):
    plan = plan_backbone_push(aligned_dir, "me/so101-aligned")
    assert plan.repo_id == "me/so101-aligned"
    for required in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert required in plan.files
    assert "action_vocab.json" in plan.files and "fast_tokenizer/processor_config.json" in plan.files
    assert not any(name.startswith(".") or name == HUB_RECORD_FILE for name in plan.files)


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("model.safetensors", "no the weights"),
        ("config.json", "no the model config"),
        ("processor_config.json", "no the processor config"),
    ],
)
def test_an_incomplete_model_is_refused_naming_what_is_missing(aligned_dir, remove, message):
    (aligned_dir / remove).unlink()
    with pytest.raises(ValueError, match=message):
        plan_backbone_push(aligned_dir, "me/so101-aligned")


@pytest.mark.parametrize("repo_id", ["so101-aligned", "me/", "./out/model", "a/b/c"])
def test_a_bad_repository_id_is_refused(aligned_dir, repo_id):
    with pytest.raises(ValueError, match="not a Hub repository id"):
        plan_backbone_push(aligned_dir, repo_id)


def test_backbone_reference_of_hub_ids_local_dirs_and_pushed_dirs(aligned_dir):
    assert backbone_reference("Qwen/Qwen2.5-VL-7B-Instruct") == "Qwen/Qwen2.5-VL-7B-Instruct"
    with pytest.raises(ValueError, match=rf"roboalign align push --model_dir={aligned_dir} --repo_id="):
        backbone_reference(str(aligned_dir))
    record_backbone_push(aligned_dir, "me/so101-aligned", revision="abc123")
    assert backbone_reference(str(aligned_dir)) == "me/so101-aligned"
    (aligned_dir / "model.safetensors").write_bytes(b"retrained")  # e.g. copied over by a later run
    with pytest.raises(ValueError, match="changed after it was pushed to 'me/so101-aligned'"):
        backbone_reference(str(aligned_dir))


def test_training_a_policy_to_push_on_an_unpushed_local_backbone_is_refused_before_loading(
    aligned_dir, synthetic_dataset
):
    root, repo_id = synthetic_dataset
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    config = make_config(aligned_dir, push_to_hub=True, repo_id="me/policy")
    with pytest.raises(ValueError, match="push the backbone first"):
        RoboAlignPolicy(config, dataset_meta=meta)
    record_backbone_push(aligned_dir, "me/so101-aligned", revision=None)
    RoboAlignPolicy(config, dataset_meta=meta)  # pushed: training may start


def test_a_pushed_policy_names_its_backbone_by_the_hub_repository(aligned_dir, tmp_path):
    record_backbone_push(aligned_dir, "me/so101-aligned", revision="abc123")
    policy = RoboAlignPolicy(make_config(aligned_dir, push_to_hub=False))
    # What PreTrainedPolicy.push_model_to_hub writes into the folder it uploads, under our override's context.
    with shared_backbone_name(policy.config):
        policy.save_pretrained(tmp_path / "upload")
    assert json.loads((tmp_path / "upload" / "config.json").read_text())["vlm_model_name"] == "me/so101-aligned"
    assert json.loads((tmp_path / "upload" / "backbone.json").read_text())["vlm_model_name"] == "me/so101-aligned"
    assert policy.config.vlm_model_name == str(aligned_dir)  # the local run keeps its local backbone
    assert RoboAlignConfig.from_pretrained(tmp_path / "upload").vlm_model_name == "me/so101-aligned"


@pytest.mark.parametrize("config_class", [AlignSFTConfig, AlignGRPOConfig])
def test_align_commands_take_a_push_to_hub_repository(config_class):
    assert draccus.parse(config_class, args=["--push_to_hub=me/so101-aligned"]).push_to_hub == "me/so101-aligned"
    assert draccus.parse(config_class, args=[]).push_to_hub is None
