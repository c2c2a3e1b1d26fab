import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from lerobot_roboalign.tiny_backbone import REASONING_TOKENS, main, make_tiny_backbone

ARCHS = ["qwen2_5_vl", "qwen3_vl", "smolvlm"]
IMAGE_TOKEN = {"qwen2_5_vl": "<|image_pad|>", "qwen3_vl": "<|image_pad|>", "smolvlm": "<image>"}


def two_image_inputs(processor, task: str = "pick up the red cube"):
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": task}]
    messages = [{"role": "user", "content": content}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(2)]
    return prompt, processor(images=images, text=[prompt], return_tensors="pt")


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request, tiny_backbone_factory):
    path = tiny_backbone_factory(request.param)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    return request.param, model, AutoProcessor.from_pretrained(path)


def test_checkpoint_is_small_and_of_the_right_type(loaded, tiny_backbone_factory):
    arch, model, _ = loaded
    path = tiny_backbone_factory(arch)
    assert AutoConfig.from_pretrained(path).model_type == arch
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 5e6
    assert (path / "model.safetensors").stat().st_size < 20e6


def test_chat_template_expands_image_tokens(loaded):
    arch, model, processor = loaded
    prompt, inputs = two_image_inputs(processor)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN[arch])
    assert image_token_id == model.config.image_token_id
    assert prompt.count(IMAGE_TOKEN[arch]) == 2 and "pick up the red cube" in prompt
    visual_tokens = (inputs["input_ids"] == image_token_id).sum().item()
    assert 2 * 16 <= visual_tokens <= 2 * 64, visual_tokens


@pytest.mark.parametrize("token", ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|video_pad|>"])
def test_qwen_special_tokens_match_config(tiny_backbone_factory, token):
    path = tiny_backbone_factory("qwen2_5_vl")
    tokenizer = AutoProcessor.from_pretrained(path).tokenizer
    config = AutoConfig.from_pretrained(path)
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert token_id != tokenizer.unk_token_id and tokenizer.encode(token) == [token_id]
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert token_id < config.text_config.vocab_size


def test_reasoning_tokens_survive_decoding(loaded):
    _, _, processor = loaded
    text = "<think>reach the cube</think><answer>grasp</answer>"
    ids = processor.tokenizer.encode(text, add_special_tokens=False)
    assert all(processor.tokenizer.convert_tokens_to_ids(t) in ids for t in REASONING_TOKENS)
    assert processor.tokenizer.decode(ids, skip_special_tokens=True) == text


def test_forward_exposes_every_layer(loaded):
    _, model, processor = loaded
    _, inputs = two_image_inputs(processor)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == model.config.text_config.num_hidden_layers + 1
    assert hidden[2].shape == (1, inputs["input_ids"].shape[1], model.config.text_config.hidden_size)
    assert torch.isfinite(out.logits).all()
    assert not torch.allclose(hidden[1], hidden[3])


def test_generate_appends_tokens(loaded):
    _, model, processor = loaded
    _, inputs = two_image_inputs(processor)
    generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5


def test_existing_checkpoint_is_kept_and_mismatch_is_refused(tiny_backbone_factory):
    path = tiny_backbone_factory("qwen2_5_vl")
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert make_tiny_backbone(path, "qwen2_5_vl") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="qwen2_5_vl.*not 'qwen3_vl'"):
        make_tiny_backbone(path, "qwen3_vl")


def test_bad_arch_and_partial_directory_are_refused(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        make_tiny_backbone(tmp_path / "x", "llama")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a complete"):
        make_tiny_backbone(partial, "qwen2_5_vl")


def test_cli_accepts_positional_output_dir(tmp_path):
    path = main([str(tmp_path / "q3"), "--arch", "qwen3_vl", "--seed=1"])
    assert json.loads((path / "config.json").read_text())["model_type"] == "qwen3_vl"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directory left behind"


def test_smolvla_selects_actions_on_tiny_smolvlm(tiny_backbone_factory):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    config = SmolVLAConfig(
        vlm_model_name=str(tiny_backbone_factory("smolvlm")), load_vlm_weights=False, num_vlm_layers=4,
        device="cpu", chunk_size=10, n_action_steps=10, num_steps=2,
        input_features={"observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, 64, 64)),
                        "observation.state": PolicyFeature(FeatureType.STATE, (6,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (6,))},
    )
    policy = SmolVLAPolicy(config).eval()
    unit = {"mean": torch.zeros(6), "std": torch.ones(6)}
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats={"observation.state": unit,
                                                                                  "action": unit})
    observation = {"observation.images.front": torch.rand(3, 64, 64), "observation.state": torch.randn(6),
                   "task": "pick up the red cube"}
    action = postprocessor(policy.select_action(preprocessor(observation)))
    assert action.shape == (1, 6) and torch.isfinite(action).all()
