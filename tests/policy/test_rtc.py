"""Real-Time Chunking in the flow-matching head: guided (LeRobot's RTCProcessor) and hard inpainting."""

import pytest
import torch
from lerobot.policies.rtc import RTCConfig
from lerobot.rollout.inference.rtc import supports_rtc_inference
from test_policy import ACTION_DIM, make_batch, make_config, observation

from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy
from lerobot_roboalign.rtc import hold_chunk, prefix_batch

DELAY, HORIZON = 3, 8
GUIDED_TOLERANCE = 0.1  # guided prefix error, as a fraction of the unguided chunk's distance from the prefix


def rtc_policy(backbone, mode: str) -> RoboAlignPolicy:
    policy = RoboAlignPolicy(make_config(backbone, rtc_mode=mode, num_inference_steps=4))
    policy.config.rtc_config = RTCConfig(execution_horizon=HORIZON)  # what lerobot-rollout does
    policy.init_rtc_processor()
    return policy.eval()


def chunk(policy: RoboAlignPolicy, batch: dict, seed: int, **rtc) -> torch.Tensor:
    torch.manual_seed(seed)
    return policy.predict_action_chunk(observation(batch), **rtc)


def previous_chunk(batch_size: int = 1, length: int = 10) -> torch.Tensor:
    time = torch.linspace(0, 1, length)[:, None]
    return (torch.sin(3 * time) + torch.arange(ACTION_DIM) * 0.2).expand(batch_size, -1, -1).clone()


def test_lerobot_engine_accepts_the_policy(tiny_qwen25_backbone):
    assert supports_rtc_inference(rtc_policy(tiny_qwen25_backbone, "guided"))


def test_hard_inpainting_reproduces_the_delayed_steps_exactly(tiny_qwen25_backbone):
    policy, batch = rtc_policy(tiny_qwen25_backbone, "hard"), make_batch(1)
    prefix = previous_chunk()
    new = chunk(policy, batch, 0, inference_delay=DELAY, prev_chunk_left_over=prefix[0])
    free = chunk(policy, batch, 0)
    assert new.shape == free.shape == (1, policy.config.chunk_size, ACTION_DIM)
    torch.testing.assert_close(new[:, :DELAY], prefix[:, :DELAY], atol=1e-6, rtol=0)
    # the ramp pulls the rest of the overlap towards the prefix, more than a free chunk is
    ramp = slice(DELAY, HORIZON)
    assert (new[:, ramp] - prefix[:, ramp]).abs().mean() < (free[:, ramp] - prefix[:, ramp]).abs().mean()


@pytest.mark.parametrize("batch_size", [1, 2])
def test_guided_inpainting_follows_the_delayed_steps_within_tolerance(tiny_qwen25_backbone, batch_size):
    policy, batch = rtc_policy(tiny_qwen25_backbone, "guided"), make_batch(batch_size)
    prefix = previous_chunk(batch_size)
    guided = chunk(policy, batch, 0, inference_delay=DELAY, prev_chunk_left_over=prefix)
    free = chunk(policy, batch, 0)
    guided_error = (guided[:, :DELAY] - prefix[:, :DELAY]).abs().max()
    free_error = (free[:, :DELAY] - prefix[:, :DELAY]).abs().max()
    assert free_error > 0.5, "the unguided chunk is far from the prefix, so the check can fail"
    # A wrong time/velocity mapping pushes the chunk away from the prefix (or diverges).
    assert guided_error <= GUIDED_TOLERANCE * free_error, (guided_error, free_error)
    assert torch.isfinite(guided).all()


def test_without_rtc_config_the_prefix_is_ignored(tiny_qwen25_backbone):
    policy, batch = RoboAlignPolicy(make_config(tiny_qwen25_backbone)).eval(), make_batch(1)
    torch.testing.assert_close(
        chunk(policy, batch, 0, inference_delay=DELAY, prev_chunk_left_over=previous_chunk()[0]), chunk(policy, batch, 0)
    )


def test_engine_zero_padding_is_not_continued():
    prefix = torch.cat([previous_chunk(1, 4)[0], torch.zeros(6, ACTION_DIM)])  # LeRobot pads to the horizon
    assert prefix_batch(prefix, 2, ACTION_DIM).shape == (2, 4, ACTION_DIM)
    assert prefix_batch(torch.zeros(10, ACTION_DIM), 1, ACTION_DIM) is None
    with pytest.raises(ValueError, match="prev_chunk_left_over has shape"):
        prefix_batch(torch.zeros(10, ACTION_DIM + 1), 1, ACTION_DIM)


@pytest.mark.parametrize("mode", ["guided", "hard"])
def test_non_finite_chunk_under_rtc_finishes_the_previous_chunk_then_holds(tiny_qwen25_backbone, mode, monkeypatch):
    policy, batch = rtc_policy(tiny_qwen25_backbone, mode), make_batch(1)
    monkeypatch.setattr(policy.head, "sample", lambda *a, **k: torch.full((1, 16, ACTION_DIM), float("nan")))
    prefix = previous_chunk(1, 5)
    held = chunk(policy, batch, 0, inference_delay=DELAY, prev_chunk_left_over=prefix[0])
    torch.testing.assert_close(held, hold_chunk(prefix, 16), equal_nan=True)
    # the prefix, then rows the safety guard holds on (the last command sent); the next prefix leaves them out
    assert torch.equal(held[:, :5], prefix) and torch.isnan(held[:, 5:]).all() and policy.rtc_dropped_chunks == 1
    assert torch.equal(prefix_batch(held[0], 1, ACTION_DIM), prefix)
    with pytest.raises(RuntimeError, match="first action chunk is not finite"):
        chunk(policy, batch, 0, inference_delay=0, prev_chunk_left_over=None)
    # the synchronous path keeps handing NaN chunks to select_action's blender, which drops them
    assert torch.isnan(chunk(policy, batch, 0)).all()
