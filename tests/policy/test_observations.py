"""Malformed observations through preprocessor -> select_action -> postprocessor, as a new user sends them."""

import pytest
import torch
from test_policy import CAMERAS, make_batch, make_config, observation

from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy
from lerobot_roboalign.processor_roboalign import make_roboalign_pre_post_processors


@pytest.fixture(scope="module")
def pipeline(tiny_qwen25_backbone):
    config = make_config(tiny_qwen25_backbone)
    policy = RoboAlignPolicy(config).eval()
    pre, post = make_roboalign_pre_post_processors(config)
    return policy, pre, post


def act(pipeline, obs: dict, seed: int = 0) -> torch.Tensor:
    policy, pre, post = pipeline
    policy.reset()
    torch.manual_seed(seed)
    return post(policy.select_action(pre(obs)))


def reference(batch_size: int = 1) -> dict:
    return observation(make_batch(batch_size))


def with_images(obs: dict, convert) -> dict:
    return {k: convert(v) if k in CAMERAS else v for k, v in obs.items()}


@pytest.mark.parametrize(
    "convert",
    [
        lambda img: (img * 255).round().to(torch.uint8),  # what a camera driver returns
        lambda img: (img * 255).round(),  # float, but 0-255
        lambda img: img.permute(0, 2, 3, 1).contiguous(),  # channels-last
        lambda img: (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1)[0],  # one HWC uint8 frame
    ],
    ids=["uint8", "float_0_255", "hwc", "unbatched_hwc_uint8"],
)
def test_image_layouts_and_ranges_are_converted_to_what_the_backbone_expects(pipeline, convert):
    obs = reference()
    obs = with_images(obs, lambda img: (img * 255).round() / 255)  # exactly representable in uint8
    expected = act(pipeline, obs)
    converted = act(pipeline, with_images(obs, convert))
    torch.testing.assert_close(converted, expected, atol=1e-5, rtol=0)
    # before the fix, a 0-255 image was clamped to white: the action would differ from a white image's
    white = act(pipeline, with_images(obs, torch.ones_like))
    assert not torch.allclose(converted, white, atol=1e-4)


def test_preprocessor_output_is_channels_first_unit_range_float(pipeline):
    _, pre, _ = pipeline
    out = pre(with_images(reference(), lambda img: (img * 255).to(torch.uint8).permute(0, 2, 3, 1)))
    for camera in CAMERAS:
        assert out[camera].dtype == torch.float32 and out[camera].shape == (1, 3, 32, 32)
        assert 0 <= out[camera].min() and out[camera].max() <= 1


def test_two_tasks_for_one_observation_is_an_error_naming_the_fix(pipeline):
    _, pre, _ = pipeline
    obs = reference()
    obs["task"] = ["pick up the red cube", "push the blue block"]
    with pytest.raises(ValueError, match=r"'task' has 2 instructions .* batch of 1 observation.*Fix: pass one"):
        pre(obs)


def test_one_task_for_a_batch_is_repeated(pipeline):
    obs = reference(2)
    single = dict(obs, task=["pick up the red cube"])
    both = dict(obs, task=["pick up the red cube"] * 2)
    torch.testing.assert_close(act(pipeline, single), act(pipeline, both))


@pytest.mark.parametrize(
    ("convert", "message"),
    [
        (lambda img: (img - 0.5) / 0.25, r"'observation.images.front' has values in \[-2.*Fix: send the un-normalised"),
        (lambda img: img * 1000, r"'observation.images.front' has values in \[.*1e\+03\]"),
        (lambda img: img[:, :1], r"'observation.images.front' has shape \(1, 1, 32, 32\).*Fix: convert .* RGB"),
        (lambda img: img.to(torch.int32), r"'observation.images.front' has dtype torch.int32"),
    ],
    ids=["normalised", "above_255", "grayscale", "int32"],
)
def test_unusable_images_are_refused_before_the_model(pipeline, convert, message, monkeypatch):
    policy, pre, _ = pipeline
    monkeypatch.setattr(policy.backbone, "forward", lambda *a: pytest.fail("model code ran"))
    with pytest.raises((ValueError, TypeError), match=message):
        policy.select_action(pre(with_images(reference(), convert)))
