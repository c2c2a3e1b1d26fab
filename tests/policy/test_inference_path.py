"""The inference path a GPU needs: images stay on the policy's device, instructions are tokenised once.

They check what the path configures: the device every tensor is created on (the image processor
is asked for the images' device; nothing is copied to the CPU once the instruction is cached),
dtypes, and that the cached path gives the same features. On a machine with a GPU the device test
also runs on CUDA.
"""

import pytest
import torch

from lerobot_roboalign.backbone import VLMBackbone

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def backbone(path, dtype=torch.float32, device: str = "cpu") -> VLMBackbone:
    model = VLMBackbone(str(path), layer=2, dtype=dtype, image_resolution=(56, 56), prompt_template="{task}")
    return model.to(device).eval()


def images(batch_size: int = 2, seed: int = 0, device: str = "cpu") -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(batch_size, 3, 40, 48, generator=generator).to(device) for _ in range(2)]


TASKS = ["pick up the red cube", "push the blue block left"]


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "smolvlm"])
def test_cached_instruction_gives_the_same_features(tiny_backbone_factory, arch):
    model = backbone(tiny_backbone_factory(arch))
    with torch.no_grad():
        first, first_mask, first_image_tokens = model(images(), TASKS)  # tokenises the instruction
        again, again_mask, again_image_tokens = model(images(), TASKS)  # token ids from the cache, image processor only
        other, _, _ = model(images(seed=1), TASKS)
    assert len(model._token_cache) == len(TASKS)  # one entry per instruction
    torch.testing.assert_close(again, first)
    assert torch.equal(again_mask, first_mask) and torch.equal(again_image_tokens, first_image_tokens)
    assert first_image_tokens.sum(1).tolist() == [model.image_token_count(len(images()))] * len(TASKS)
    assert not torch.allclose(other, first), "the images still reach the model on a cache hit"


def test_instruction_is_tokenised_once_per_episode(tiny_qwen25_backbone, monkeypatch):
    model = backbone(tiny_qwen25_backbone)
    calls = []
    tokenizer_call = type(model.processor.tokenizer).__call__
    monkeypatch.setattr(type(model.processor.tokenizer), "__call__", lambda s, *a, **k: calls.append(1) or tokenizer_call(s, *a, **k))
    with torch.no_grad():
        for _ in range(3):
            model(images(1), TASKS[:1])
        model(images(1), TASKS[1:])  # a new instruction is tokenised
    assert len(calls) == 2


@pytest.mark.parametrize("device", DEVICES)
def test_cached_path_keeps_every_tensor_on_the_images_device(tiny_qwen25_backbone, monkeypatch, device):
    model = backbone(tiny_qwen25_backbone, dtype=torch.bfloat16, device=device)
    with torch.no_grad():
        model(images(device=device), TASKS)  # cache the instruction
    seen, copies = {}, []
    processor_call = type(model.processor.image_processor).__call__

    def spy_processor(self, *args, **kwargs):
        seen["device"] = kwargs.get("device")
        seen["image_devices"] = {img.device for sample in kwargs["images"] for img in sample}
        return processor_call(self, *args, **kwargs)

    tensor_cpu = torch.Tensor.cpu
    monkeypatch.setattr(type(model.processor.image_processor), "__call__", spy_processor)
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: copies.append(t.shape) or tensor_cpu(t, *a, **k))
    inputs = model.prepare(images(device=device), TASKS)
    monkeypatch.undo()

    device = images(device=device)[0].device
    assert seen["device"] == device and seen["image_devices"] == {device}
    assert copies == [], "no image is copied to the CPU for the Hugging Face processor"
    assert {t.device for t in inputs.values()} == {device}
    assert inputs["pixel_values"].dtype == torch.bfloat16
    assert inputs["input_ids"].dtype == torch.long and inputs["attention_mask"].shape == inputs["input_ids"].shape
    with torch.no_grad():
        features, mask, image_tokens = model.encode(inputs)
    assert features.device == device and mask.dtype == torch.bool and image_tokens.device == device
