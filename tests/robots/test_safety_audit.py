"""Issue 11: the safety step after resets, per async chunk, with bad limits and overrides; a property test."""

import logging
import uuid

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lerobot.processor import TransitionKey
from lerobot.utils.constants import OBS_STATE

from lerobot_roboalign.safety import RoboAlignActionSafetyStep, RoboAlignMeasuredStateStep, SafetyContext

NAN, INF = float("nan"), float("inf")


def _pair(**kwargs) -> tuple[RoboAlignMeasuredStateStep, RoboAlignActionSafetyStep]:
    """A measured-state step and a safety step linked as in a saved checkpoint (a fresh link per test)."""
    link = uuid.uuid4().hex
    return RoboAlignMeasuredStateStep(link=link), RoboAlignActionSafetyStep(link=link, **kwargs)


def _observe(tap: RoboAlignMeasuredStateStep, state: list[list[float]]) -> None:
    tap({TransitionKey.OBSERVATION: {OBS_STATE: torch.tensor(state)}})


# ---- item 2: the first action after a reset is limited against the measured joint position ----
def test_first_action_after_reset_is_limited_against_the_measured_position():
    tap, step = _pair(max_delta=5.0, joint_min=[-180.0], joint_max=[180.0])
    _observe(tap, [[10.0]])
    step.action(torch.tensor([[12.0]]))
    step.reset()
    _observe(tap, [[20.0]])
    assert step.action(torch.tensor([[150.0]])).tolist() == [[25.0]]  # not 150: 5 from where the arm is


def test_non_finite_first_action_holds_the_measured_position():
    tap, step = _pair(max_delta=5.0)
    _observe(tap, [[3.0, 4.0]])
    assert step.action(torch.tensor([[NAN, 9.0]])).tolist() == [[3.0, 4.0]]


def test_delta_actions_are_not_anchored_to_a_state_of_another_size(caplog):
    tap, step = _pair(max_delta=0.1, anchor_to_state=False)  # what the processor factory saves for such a policy
    _observe(tap, [[0.0] * 14])  # e.g. so101_lang: 14-D state, 4-D [dx, dy, dz, grasp] action
    with caplog.at_level(logging.WARNING, logger="lerobot_roboalign.safety"):
        assert step.action(torch.tensor([[1.0, 1.0, 1.0, 1.0]])).tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert "not rate-limited" in caplog.text


# ---- item 5: policy.reset() alone (lerobot-eval) ends the limiter's memory of the last episode ----
def test_new_episode_in_the_context_restarts_the_rate_limit():
    tap, step = _pair(max_delta=5.0)
    policy = SafetyContext()  # what a RoboAlignPolicy instance holds
    for _ in range(3):
        _observe(tap, [[90.0]])
        policy.enter()  # the policy runs between the pre- and the postprocessor
        step.action(torch.tensor([[90.0]]))
    policy.new_episode()  # what RoboAlignPolicy.reset() does
    _observe(tap, [[0.0]])
    policy.enter()
    assert step.action(torch.tensor([[0.0]])).tolist() == [[0.0]]  # was 85.0: limited against the last episode


# ---- item 1: async server order (each action of a chunk in time order, chunks overlapping) ----
def test_async_chunks_are_limited_from_their_own_observation_not_the_previous_chunk_end():
    """The issue's reproduction: chunk 1 ramps 0 -> 75 by 5, chunk 2 (observed at step 8, arm at 40) holds 40."""
    tap, step = _pair(max_delta=5.0, joint_min=[-100.0], joint_max=[100.0])

    def server_chunk(measured: float, targets: list[float]) -> list[float]:
        step.start_chunk_at_observation()  # RoboAlignPolicyServer, before LeRobot's preprocessor runs
        _observe(tap, [[measured]])
        return [step.action(torch.tensor([[t]])).item() for t in targets]

    chunk1 = server_chunk(0.0, [5.0 * i for i in range(16)])
    chunk2 = server_chunk(40.0, [40.0] * 16)
    assert chunk1 == [5.0 * i for i in range(16)]
    assert chunk2 == [40.0] * 16  # was 70, 65, 60, ...: limited against chunk 1's end (step 15)
    # A chunk that wants to go far starts at the measured position (its step t is the observation's) and ramps.
    assert server_chunk(40.0, [-100.0] * 4) == [40.0, 35.0, 30.0, 25.0]


# ---- item 4: limits are validated when the step is built; the output is always finite ----
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_delta": -1.0}, "max_delta must be finite and > 0"),
        ({"max_delta": 0.0}, "max_delta must be finite and > 0"),
        ({"max_delta": [1.0, NAN]}, "max_delta must be finite and > 0"),
        ({"joint_min": [-INF, 0.0], "joint_max": [1.0, 1.0]}, "must be finite"),
        ({"joint_min": [0.0, NAN], "joint_max": [1.0, 1.0]}, "must be finite"),
        ({"joint_min": [0.0], "joint_max": [1.0, 2.0]}, "one per joint"),
        ({"dataset_stats": {"action": {"min": torch.tensor([1.0, NAN]), "max": torch.tensor([2.0, 2.0])}}},
         "recompute them"),
        ({"dataset_stats": {"action": {"min": torch.tensor([-INF]), "max": torch.tensor([2.0])}}}, "must be finite"),
        ({"dataset_stats": {"action": {"min": torch.tensor([0.0]), "max": torch.tensor([1.0])}}, "limit_margin": NAN},
         "limit_margin"),
    ],
)  # fmt: skip
def test_bad_limits_are_refused_when_the_step_is_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoboAlignActionSafetyStep(**kwargs)


def test_bad_limits_given_at_rollout_are_refused_before_any_action():
    from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
    from lerobot_roboalign.processor_roboalign import safety_overrides

    with pytest.raises(ValueError, match="max_delta"):
        safety_overrides(RoboAlignConfig(safety_max_delta=-2.0))


# ---- item 3: --policy.safety_* published by the policy override the saved step, both ways ----
def test_policy_settings_override_the_saved_step_and_are_logged(caplog):
    tap, step = _pair(enabled=True, max_delta=5.0, joint_min=[-90.0], joint_max=[90.0])
    policy = SafetyContext()
    _observe(tap, [[0.0]])
    policy.enter()
    step.action(torch.tensor([[0.0]]))
    with caplog.at_level(logging.INFO, logger="lerobot_roboalign.safety"):
        policy.publish_overrides({"max_delta": 1.0, "enabled": None, "joint_min": None})
        _observe(tap, [[0.0]])
        policy.enter()
        assert step.action(torch.tensor([[50.0]])).tolist() == [[pytest.approx(1.0, abs=1e-3)]]
    assert "max_delta=1.0" in caplog.text and "joint_min=[-90]" in caplog.text
    policy.publish_overrides({"enabled": False})
    policy.enter()
    assert step.action(torch.tensor([[50.0]])).tolist() == [[50.0]]
    assert step.get_config()["max_delta"] == 5.0  # what the checkpoint holds is not rewritten
