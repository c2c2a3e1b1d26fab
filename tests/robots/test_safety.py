"""The safety layer between a RoboAlign policy and a real arm (no hardware needed)."""

import logging

import pytest
import torch
from lerobot.processor import PolicyProcessorPipeline
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

from lerobot_roboalign.chunk_blending import ChunkBlender
from lerobot_roboalign.safety import RoboAlignActionSafetyStep

NAN = float("nan")


def test_step_clamps_to_joint_limits_and_rate_limits():
    step = RoboAlignActionSafetyStep(max_delta=2.0, joint_min=[-10.0, 0.0], joint_max=[10.0, 100.0])
    assert step.action(torch.tensor([[50.0, -5.0]])).tolist() == [[10.0, 0.0]]
    out = step.action(torch.tensor([[-50.0, 50.0]]))
    assert out.tolist() == [[8.0, 2.0]]  # clamped, then at most 2 per step from the last target


def test_step_holds_last_safe_target_on_non_finite_action(caplog):
    step = RoboAlignActionSafetyStep(max_delta=5.0)
    step.action(torch.tensor([[1.0, 2.0]]))
    with caplog.at_level(logging.WARNING):
        held = step.action(torch.tensor([[NAN, 3.0]]))
    assert held.tolist() == [[1.0, 2.0]]
    assert "non-finite" in caplog.text
    assert step.action(torch.tensor([[float("inf"), 0.0]])).tolist() == [[1.0, 2.0]]


def test_step_refuses_a_non_finite_first_action():
    with pytest.raises(RuntimeError, match="no joint position was measured"):
        RoboAlignActionSafetyStep(max_delta=1.0).action(torch.tensor([[NAN, 0.0]]))


def test_step_guards_chunk_rows_in_the_order_they_are_read():
    """An RTC chunk's rows pass the guard when LeRobot's ActionQueue reads them (an int index), in that order."""
    step = RoboAlignActionSafetyStep(max_delta=1.0)
    step.action(torch.zeros(1, 2))
    rows = step.action(torch.full((1, 4, 2), 10.0)).squeeze(0)[1:].clone()  # what the engine's queue keeps
    assert [rows[i][0].item() for i in range(3)] == pytest.approx([1.0, 2.0, 3.0], abs=1e-3)


def test_step_limits_from_dataset_stats():
    stats = {"action": {"min": torch.tensor([0.0, -1.0]), "max": torch.tensor([10.0, 1.0])}}
    step = RoboAlignActionSafetyStep(max_delta=1.0, dataset_stats=stats, limit_margin=0.1)
    assert step.joint_min == pytest.approx([-1.0, -1.2]) and step.joint_max == pytest.approx([11.0, 1.2])


def test_stats_without_min_max_keep_rate_limit_and_warn(caplog):
    stats = {"action": {"mean": torch.zeros(2), "std": torch.ones(2)}}
    with caplog.at_level(logging.WARNING, logger="lerobot_roboalign.safety"):
        step = RoboAlignActionSafetyStep(max_delta=1.0, dataset_stats=stats)
    assert step.joint_min is None and any("no joint limits" in m for m in caplog.messages)
    step.action(torch.zeros(1, 2))
    assert step.action(torch.tensor([[5.0, -5.0]])).tolist() == [[1.0, -1.0]]


def test_step_rejects_bad_limits_with_the_fix():
    with pytest.raises(ValueError, match="swap them"):
        RoboAlignActionSafetyStep(max_delta=1.0, joint_min=[1.0], joint_max=[0.0])
    with pytest.raises(ValueError, match="one per joint"):
        RoboAlignActionSafetyStep(max_delta=[1.0, 2.0, 3.0]).action(torch.zeros(1, 2))


def test_step_reloads_from_a_saved_postprocessor(tmp_path):
    step = RoboAlignActionSafetyStep(max_delta=[1.0, 2.0], joint_min=[-5.0, -5.0], joint_max=[5.0, 5.0])
    pipeline = PolicyProcessorPipeline(
        steps=[step],
        name="policy_postprocessor",
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    )
    pipeline.save_pretrained(tmp_path)
    loaded = PolicyProcessorPipeline.from_pretrained(
        tmp_path,
        config_filename="policy_postprocessor.json",
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    )
    assert isinstance(loaded.steps[0], RoboAlignActionSafetyStep)
    assert loaded.steps[0].get_config() == step.get_config()
    loaded(torch.zeros(1, 2))
    assert loaded(torch.tensor([[9.0, 9.0]])).tolist() == [[1.0, 2.0]]


def test_blender_crossfades_chunk_boundaries():
    blender = ChunkBlender(blend_steps=3)
    blender.push(torch.zeros(1, 8, 1))
    emitted = []
    while not blender.needs_chunk():
        emitted.append(blender.pop().item())
    blender.push(torch.full((1, 8, 1), 4.0))
    emitted += [blender.pop().item() for _ in range(4)]
    assert emitted[:5] == [0.0] * 5
    assert emitted[5:] == pytest.approx([1.0, 2.0, 3.0, 4.0])  # a ramp, not a 0 -> 4 jump


def test_blender_drops_non_finite_chunk_and_holds(caplog):
    blender = ChunkBlender(blend_steps=0)
    blender.push(torch.ones(1, 2, 1))
    blender.pop(), blender.pop()
    with caplog.at_level(logging.WARNING):
        blender.push(torch.full((1, 2, 1), NAN))
    assert blender.pop().item() == 1.0 and blender.dropped_chunks == 1
    assert "dropped an action chunk" in caplog.text


def test_blender_without_any_finite_chunk_raises():
    blender = ChunkBlender()
    blender.push(torch.full((1, 2, 1), NAN))
    with pytest.raises(RuntimeError, match="no finite action chunk"):
        blender.pop()


def test_late_far_chunk_does_not_jump():
    """A chunk that arrives late and far away is reached through blending + the rate limit."""
    blender, step = ChunkBlender(blend_steps=2), RoboAlignActionSafetyStep(max_delta=0.5)
    blender.push(torch.zeros(1, 4, 2))
    sent = [step.action(blender.pop()) for _ in range(2)]
    blender.push(torch.full((1, 4, 2), 10.0))  # the world moved on while inference was late
    sent += [step.action(blender.pop()) for _ in range(4)]
    deltas = torch.stack(sent).diff(dim=0).abs()
    assert deltas.max() <= 0.5 + 1e-6
    assert sent[-1].max() > 0  # it does move towards the new chunk
