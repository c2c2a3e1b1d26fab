"""The VLA shows its backbone what the backbone was aligned on (issue 10, item 8).

Alignment renders a frame with ``align_messages`` + TRL's ``prepare_multimodal_messages`` + the processor's chat
template; the VLA renders it in ``VLMBackbone.forward``. Both are compared on the tensors that reach the model.
"""

import shutil
from pathlib import Path

import pytest
import torch
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.configs.policies import PreTrainedConfig
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from transformers import AutoProcessor
from trl.data_utils import prepare_multimodal_messages

from lerobot_roboalign.align.data import ALIGN_INSTRUCTION, AlignDataConfig, align_messages, load_samples
from lerobot_roboalign.alignment_format import AlignmentFormat
from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

FRONT = "observation.images.front"


@pytest.fixture(scope="module")
def dataset(synthetic_dataset_factory) -> tuple[Path, str]:
    return synthetic_dataset_factory(cameras=("front",), image_hw=(64, 64), num_episodes=1, episode_length=8)


def aligned_backbone(backbone: Path, tmp_path: Path, fmt: AlignmentFormat) -> Path:
    """A copy of the tiny backbone with the record `align sft` writes next to its output."""
    path = tmp_path / "aligned"
    shutil.copytree(backbone, path)
    fmt.save_pretrained(path)
    return path


def make_config(backbone: Path, cameras: dict[str, tuple] | None = None, **overrides) -> RoboAlignConfig:
    cameras = cameras or {FRONT: (3, 64, 64)}
    return RoboAlignConfig(
        vlm_model_name=str(backbone), vlm_layer=2, head_hidden_size=32, head_num_layers=1, head_num_heads=2,
        device="cpu", input_features={k: PolicyFeature(FeatureType.VISUAL, s) for k, s in cameras.items()},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))}, **overrides,
    )


def alignment_inputs(backbone: Path, sample: dict) -> dict:
    """What SFT / GRPO / generate feed the MLLM for ``sample`` (TRL's message preparation, left padding aside)."""
    processor = AutoProcessor.from_pretrained(backbone)
    conversation = prepare_multimodal_messages(align_messages(sample["task"], sample["state"]), images=sample["images"])
    return processor.apply_chat_template(
        [conversation], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def vla_inputs(policy: RoboAlignPolicy, dataset: tuple[Path, str], frame_index: int) -> dict:
    """The model inputs the VLA builds for the same frame, read as lerobot-train reads it (float images)."""
    root, repo_id = dataset
    item = LeRobotDataset(repo_id, root=root)[frame_index]
    captured = {}
    policy.backbone.vlm.register_forward_pre_hook(lambda m, a, kwargs: captured.update(kwargs), with_kwargs=True)
    policy.backbone([item[FRONT][None]], [item["task"]])
    return captured


@pytest.mark.parametrize("image_size", [None, 56, 112])
def test_vla_renders_a_frame_as_alignment_did(tiny_qwen25_backbone, dataset, tmp_path, image_size):
    root, repo_id = dataset
    data = AlignDataConfig(repo_ids=[repo_id], roots=[str(root)], cameras=["front"], image_size=image_size)
    sample = load_samples(data)[3]
    backbone = aligned_backbone(tiny_qwen25_backbone, tmp_path, AlignmentFormat.from_data_config(data))
    expected = alignment_inputs(backbone, sample)
    got = vla_inputs(RoboAlignPolicy(make_config(backbone)), dataset, 3)
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["image_grid_thw"], expected["image_grid_thw"])
    # Alignment resizes uint8 PIL images, the VLA float tensors: within about one uint8 level after normalising.
    difference = (got["pixel_values"].float() - expected["pixel_values"]).abs()
    assert difference.max() < 0.02 and difference.mean() < 1e-3, (difference.max(), difference.mean())


def test_the_old_vla_defaults_render_something_else(tiny_qwen25_backbone, dataset, tmp_path):
    root, repo_id = dataset
    sample = load_samples(AlignDataConfig(repo_ids=[repo_id], roots=[str(root)], cameras=["front"]))[3]
    expected = alignment_inputs(tiny_qwen25_backbone, sample)
    old = RoboAlignPolicy(make_config(tiny_qwen25_backbone, prompt_template="{task}", image_resolution=(224, 224)))
    got = vla_inputs(old, dataset, 3)
    assert got["input_ids"].shape != expected["input_ids"].shape


def test_unset_fields_come_from_the_record_and_explicit_ones_win(tiny_qwen25_backbone, tmp_path):
    fmt = AlignmentFormat(prompt_template="Do: {task}.{state}", image_size=56)
    backbone = aligned_backbone(tiny_qwen25_backbone, tmp_path, fmt)
    policy = RoboAlignPolicy(make_config(backbone))
    assert (policy.config.prompt_template, policy.config.image_resolution) == ("Do: {task}.{state}", (56, 56))
    assert policy.backbone.build_prompts(["stack the cubes"], 1)[0].count("Do: stack the cubes.") == 1
    explicit = RoboAlignPolicy(make_config(backbone, prompt_template="{task}", image_resolution=(112, 112)))
    assert (explicit.config.prompt_template, explicit.config.image_resolution) == ("{task}", (112, 112))
    # The resolved values are part of the saved policy config, so a checkpoint keeps them.
    policy.save_pretrained(tmp_path / "policy")
    reloaded = PreTrainedConfig.from_pretrained(tmp_path / "policy")
    assert (reloaded.prompt_template, tuple(reloaded.image_resolution)) == ("Do: {task}.{state}", (56, 56))


def test_a_backbone_never_aligned_gets_the_alignment_defaults(tiny_qwen25_backbone):
    policy = RoboAlignPolicy(make_config(tiny_qwen25_backbone, cameras={FRONT: (3, 48, 64)}))
    assert (policy.config.prompt_template, policy.config.image_resolution) == (ALIGN_INSTRUCTION, (48, 64))
    with pytest.raises(ValueError, match="different sizes"):
        cameras = {FRONT: (3, 64, 64), "observation.images.wrist": (3, 32, 32)}
        RoboAlignPolicy(make_config(tiny_qwen25_backbone, cameras=cameras))


def test_the_record_keeps_which_state_entries_were_written(tmp_path):
    cfg = AlignDataConfig(repo_ids=["r"], include_state=True, state_names=["ee_x", "gripper_pose"])
    fmt = AlignmentFormat.from_data_config(cfg)
    fmt.save_pretrained(tmp_path)
    assert AlignmentFormat.from_pretrained(str(tmp_path)) == fmt and fmt.state_names == ("ee_x", "gripper_pose")
    with pytest.raises(ValueError, match="--dataset.include_state=true"):  # names without the state: refused
        AlignDataConfig(repo_ids=["r"], state_names=["ee_x"])


@pytest.mark.parametrize("template", ["{'task': None}", "Do {tsk}", "no task here"])
def test_a_template_that_cannot_carry_the_task_is_refused(tiny_qwen25_backbone, template):
    with pytest.raises(ValueError, match="prompt_template"):
        RoboAlignPolicy(make_config(tiny_qwen25_backbone, prompt_template=template))


def test_the_command_line_needs_the_template_quoted(tiny_qwen25_backbone):
    """LeRobot's CLI reads ``{task}`` as YAML, a mapping: refused with the quoting that works, which keeps it."""
    import draccus

    def parsed(value: str) -> RoboAlignConfig:
        config = draccus.parse(RoboAlignConfig, args=[f"--prompt_template={value}"])
        return make_config(tiny_qwen25_backbone, prompt_template=config.prompt_template)

    with pytest.raises(ValueError, match="quote it inside the shell quotes"):
        RoboAlignPolicy(parsed("{task}"))
    assert RoboAlignPolicy(parsed("'Do: {task}.{state}'")).config.prompt_template == "Do: {task}.{state}"
