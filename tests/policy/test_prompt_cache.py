"""The backbone tokenises each instruction once, whatever the batch around it (lerobot-train shuffles tasks)."""

import random

import pytest
import torch

from lerobot_roboalign.backbone import VLMBackbone

TASKS = [f"task number {i} with {'many extra words ' * (i % 3)}" for i in range(10)]


@pytest.fixture(scope="module")
def backbone(tiny_qwen25_backbone) -> VLMBackbone:
    return VLMBackbone(str(tiny_qwen25_backbone), layer=2, dtype=torch.float32, image_resolution=(56, 56),
                       prompt_template="{task}").eval()


def camera_batch(size: int, seed: int) -> list[torch.Tensor]:
    return [torch.rand(size, 3, 40, 48, generator=torch.Generator().manual_seed(seed))]


def test_shuffled_batches_hit_the_cache_per_instruction(backbone, monkeypatch):
    """20 batches of 8 shuffled over 10 tasks: each task is tokenised once (a batch-tuple key misses all 20)."""
    backbone._token_cache.clear()
    calls = []
    tokenizer_call = type(backbone.processor.tokenizer).__call__
    monkeypatch.setattr(type(backbone.processor.tokenizer), "__call__",
                        lambda s, *a, **k: calls.append(1) or tokenizer_call(s, *a, **k))
    rng = random.Random(0)
    seen = set()
    for step in range(20):
        tasks = rng.choices(TASKS, k=8)
        seen.update(tasks)
        backbone.prepare(camera_batch(8, step), tasks)
    assert len(calls) == len(seen) <= len(TASKS)


def test_cached_prompts_pad_like_the_processor(backbone):
    """Prompts of different lengths, stacked from the cache, equal the processor's own padded batch."""
    tasks = [TASKS[2], TASKS[0], TASKS[1]]
    backbone.prepare(camera_batch(3, 0), tasks[:1])  # cache one of them first
    inputs = backbone.prepare(camera_batch(3, 1), tasks)
    resized = torch.nn.functional.interpolate(camera_batch(3, 1)[0], size=(56, 56), mode="bicubic", antialias=True)
    expected = backbone.processor(text=backbone.build_prompts(tasks, 1), images=[[img] for img in resized.clamp(0, 1)],
                                  return_tensors="pt", padding=True, do_rescale=False)
    assert len(set(expected["attention_mask"].sum(1).tolist())) == 3  # the prompts do differ in length
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(inputs[key], expected[key]), key
    torch.testing.assert_close(inputs["pixel_values"], expected["pixel_values"])


def test_cache_is_bounded_least_recently_used_first(backbone, monkeypatch):
    monkeypatch.setattr("lerobot_roboalign.backbone.TOKEN_CACHE_SIZE", 3)
    backbone._token_cache.clear()
    for task in TASKS[:3]:
        backbone.prepare(camera_batch(1, 0), [task])
    backbone.prepare(camera_batch(1, 0), [TASKS[0]])  # used again: kept
    backbone.prepare(camera_batch(1, 0), [TASKS[3]])  # evicts the least recently used, TASKS[1]
    assert [task for task, _ in backbone._token_cache] == [TASKS[2], TASKS[0], TASKS[3]]
