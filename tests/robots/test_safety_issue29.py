"""Issue 29: each finding reproduced (each test failed on the code before the fix), on an injected clock.

RTC findings drive LeRobot's own ``RTCInferenceEngine`` (as rtc.RoboAlignRTCEngine: the engine
``lerobot-rollout --inference.type=rtc`` builds for a RoboAlign policy) through its public hand-offs
(``notify_observation``, ``reset``, ``get_action``) and one inference done as its thread does it (LeRobot's
``build_dataset_frame`` on the held observation, preprocessor, policy, postprocessor, ``ActionQueue.merge``), so
every interleaving is forced, not waited for. The engines under real threads are in test_safety_stress.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from lerobot.policies.rtc import RTCConfig
from lerobot.policies.utils import prepare_observation_for_inference
from lerobot.processor import PolicyProcessorPipeline
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
from lerobot.utils.constants import OBS_STATE
from lerobot.utils.feature_utils import build_dataset_frame
from test_safety_findings import JOINTS, _Loaded, bound_checkpoint  # noqa: F401  (a fixture)

from lerobot_roboalign import safety
from lerobot_roboalign.safety import (
    DEFAULT_MAX_MEASUREMENT_AGE_S,
    RoboAlignActionSafetyStep,
    RoboAlignMeasuredStateStep,
    SafetyContext,
)

ROOT = Path(__file__).resolve().parents[2]
D, PERIOD, CHUNK = 5.0, 1 / 30, 8
HW = {OBS_STATE: {"dtype": "float32", "shape": (1,), "names": ["joint.pos"]}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(safety, "clock", fake)
    return fake


class Policy:
    """The safety calls of RoboAlignPolicy.predict_action_chunk around a chunk that goes to ``target``."""

    def __init__(self, target: float = 0.0) -> None:
        self.safety_context, self.target = SafetyContext(), target

    def reset(self) -> None:
        self.safety_context.new_episode()

    def predict_action_chunk(self, batch: dict, **_) -> torch.Tensor:
        self.safety_context.enter(batch, chunk=True)
        return self.safety_context.tag(torch.full((1, CHUNK, 1), self.target))


def _pipelines(**limits) -> tuple[PolicyProcessorPipeline, PolicyProcessorPipeline, RoboAlignActionSafetyStep]:
    step = RoboAlignActionSafetyStep(max_delta=D, **limits)
    pre = PolicyProcessorPipeline(steps=[RoboAlignMeasuredStateStep()])
    post = PolicyProcessorPipeline(steps=[step], to_transition=policy_action_to_transition,
                                   to_output=transition_to_policy_action)  # fmt: skip
    return pre, post, step


def rtc_engine(policy: Policy, **limits):
    """LeRobot's RTC engine, as lerobot-rollout builds it for a RoboAlign policy; its queue ready, no thread."""
    from lerobot.policies.rtc import ActionQueue

    from lerobot_roboalign.rtc import use_guarded_rtc_engine

    pre, post, step = _pipelines(**limits)
    config = RTCConfig(enabled=True, execution_horizon=CHUNK)
    engine = use_guarded_rtc_engine()(policy, pre, post, robot_wrapper=None, rtc_config=config, hw_features=HW,
                                      task="pick", fps=30, device="cpu")  # fmt: skip
    engine._action_queue, engine._obs_holder = ActionQueue(config), {"obs": None}
    return engine, step


def infer(engine, delay: int = 0) -> None:
    """One inference of the engine's thread (RTCInferenceEngine._rtc_loop): the held observation -> the queue."""
    queue = engine.action_queue
    index = queue.get_action_index()
    with engine._obs_lock:
        observation = engine._obs_holder["obs"]
    batch = prepare_observation_for_inference(build_dataset_frame(HW, observation, prefix="observation"),
                                              torch.device("cpu"), "pick", "so101_follower")  # fmt: skip
    actions = engine._policy.predict_action_chunk(engine._preprocessor(batch))
    queue.merge(actions.squeeze(0).clone(), engine._postprocessor(actions).squeeze(0), delay, index)


def tick(engine, clock: Clock, arm: float) -> float | None:
    """One control-loop tick: read the arm and notify the engine, then take the next command."""
    clock.now += PERIOD
    engine.notify_observation({"joint.pos": arm})
    command = engine.get_action(None)
    return None if command is None else command.item()


# ---- 1: a slow inference holds the arm, names its cause, and the rollout goes on ----
def test_finding1_a_10s_first_inference_holds_the_arm_instead_of_stopping_sync(clock, caplog):
    pre, post, step = _pipelines(joint_min=[-100.0], joint_max=[100.0])
    policy = Policy(target=90.0)
    batch = pre({OBS_STATE: torch.tensor([[20.0]])})  # the robot read, preprocessed at once (sync engine)
    chunk = policy.predict_action_chunk(batch)
    clock.now += 10.0  # the first forward took 10 s (a 7B's CUDA warm-up)
    with caplog.at_level(logging.WARNING, logger="lerobot_roboalign.safety"):
        first = post(chunk[:, 0])  # was RuntimeError "no safe target ... normalisation stats"
    assert first.item() == 20.0  # the arm holds where it was measured
    limit = f"over the {DEFAULT_MAX_MEASUREMENT_AGE_S:g} s limit"
    assert "inference took 10.0 s" in caplog.text and limit in caplog.text
    assert post(chunk[:, 1]).item() == 20.0  # the rest of that chunk holds too
    clock.now += PERIOD
    fresh = policy.predict_action_chunk(pre({OBS_STATE: torch.tensor([[20.0]])}))
    assert post(fresh[:, 0]).item() == 25.0  # a fresh chunk: control resumes, max_delta from the arm


def test_finding1_a_10s_first_inference_holds_the_arm_under_rtc(clock):
    policy = Policy(target=90.0)
    engine, _ = rtc_engine(policy)
    engine.notify_observation({"joint.pos": 20.0})
    clock.now += 10.0
    infer(engine, delay=300)  # 10 s at 30 fps: more rows executed than the chunk holds
    infer(engine)  # its rows hold (no abort); the next inference is fresh ...
    assert tick(engine, clock, 20.0) == 20.0  # ... but was computed from the same held (old) observation
    engine.notify_observation({"joint.pos": 20.0})
    infer(engine)
    assert tick(engine, clock, 20.0) == 25.0


def test_the_age_limit_has_one_default_in_code_and_docs_and_is_a_rollout_flag(bound_checkpoint):
    docs = (ROOT / "docs" / "safety.md").read_text()
    assert f"`safety_max_measurement_age_s` (default {DEFAULT_MAX_MEASUREMENT_AGE_S:g} s)" in docs
    assert "3 s" not in docs and "default 5 s" not in docs.replace(f"(default {DEFAULT_MAX_MEASUREMENT_AGE_S:g} s)", "")
    loaded = _Loaded(bound_checkpoint, "--safety_max_measurement_age_s=12")
    loaded.act(0.0)
    assert loaded.step.max_measurement_age_s == 12.0


# ---- 2: a chunk from an observation captured before the reset never anchors the new episode ----
def test_finding2_rtc_reset_race_the_held_pre_reset_observation_moves_nothing(clock):
    policy = Policy(target=0.0)
    engine, _ = rtc_engine(policy)
    engine.notify_observation({"joint.pos": 0.0})  # the last observation before the reset
    engine.reset()  # from the control loop: the engine still holds that observation
    clock.now += 2 * PERIOD  # the inference in flight ends after a control period, before the next notify
    infer(engine)  # computed from the held observation (arm at 0), preprocessed after the reset
    arm = 140.0  # the arm was moved for the next episode
    sent = [tick(engine, clock, arm) for _ in range(4)]
    assert sent == [arm] * 4, sent  # was 135 (then 130, ...): toward the pre-reset pose


# ---- 3: under RTC every command is checked against the joints the control loop read that tick ----
def test_finding3_a_stalled_arm_under_rtc_is_never_commanded_beyond_max_delta(clock):
    policy = Policy(target=100.0)
    engine, _ = rtc_engine(policy)
    engine.notify_observation({"joint.pos": 0.0})
    infer(engine)
    sent = [tick(engine, clock, 0.0) for _ in range(CHUNK)]  # the arm is blocked at 0
    assert max(abs(command) for command in sent) <= D + 1e-6, sent  # was 5, 10, ..., 40


# ---- 4: a checkpoint bound before this change: the bound step beats config.json's training values ----
def test_finding4_bound_limits_beat_training_values_left_in_config_json(bound_checkpoint, caplog):
    saved = json.loads((bound_checkpoint / "policy_postprocessor.json").read_text())["steps"]
    bound = next(step["config"] for step in saved if step["registry_name"] == "roboalign_action_safety")
    config_path = bound_checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config.update(safety_max_delta=10.0, safety_joint_min=[-180.0] * JOINTS, safety_joint_max=[180.0] * JOINTS)
    config_path.write_text(json.dumps(config))  # as the earlier calibration check left it
    with caplog.at_level(logging.INFO, logger="lerobot_roboalign.safety"):
        loaded = _Loaded(bound_checkpoint)
        loaded.act(0.0)
    assert loaded.step.max_delta == 2.0 and loaded.step.joint_max == bound["joint_max"]  # were 10 and +-180
    assert loaded.step.joint_min == bound["joint_min"]
    line = next(m for m in caplog.messages if "in force" in m)
    assert "--policy.safety_max_delta" not in line and "max_delta=2.0 (bound by `roboalign calibration check`" in line
    flagged = _Loaded(bound_checkpoint, "--safety_max_delta=1.5")
    flagged.act(0.0)
    assert flagged.step.max_delta == 1.5  # a flag still wins


# ---- 5: an arm outside the limits moves back toward them at max_delta, never jumps into them ----
def test_finding5_an_arm_outside_the_limits_moves_back_at_max_delta(clock):
    pre, post, _ = _pipelines(joint_min=[-100.0], joint_max=[100.0])
    policy, arm, sent = Policy(target=0.0), 130.0, []
    for _ in range(8):
        clock.now += PERIOD
        chunk = policy.predict_action_chunk(pre({OBS_STATE: torch.tensor([[arm]])}))
        arm = post(chunk[:, 0]).item()  # the arm follows
        sent.append(arm)
    assert sent == [125.0, 120.0, 115.0, 110.0, 105.0, 100.0, 95.0, 90.0]


# ---- 6: silent settings are refused (or warned) at load or at bind ----
def test_finding6_a_state_of_another_size_than_the_action_is_refused():
    pre, post, _ = _pipelines()
    policy = Policy(target=90.0)
    chunk = policy.predict_action_chunk(pre({OBS_STATE: torch.zeros(1, 2)}))
    with pytest.raises(ValueError, match="observation.state has 2 values but the action has 1.*anchor_to_state"):
        post(chunk[:, 0])  # was 90 (from 0), a warning only


def test_finding6_the_processor_factory_anchors_only_a_state_of_the_actions_size(tmp_path):
    from lerobot.configs import FeatureType, PolicyFeature

    from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
    from lerobot_roboalign.processor_roboalign import make_roboalign_pre_post_processors

    def anchored(state: int) -> bool:
        camera = PolicyFeature(FeatureType.VISUAL, (3, 8, 8))
        config = RoboAlignConfig(input_features={"observation.images.front": camera,
                                                 OBS_STATE: PolicyFeature(FeatureType.STATE, (state,))},
                                 output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))})  # fmt: skip
        _, post = make_roboalign_pre_post_processors(config)
        return next(s for s in post.steps if isinstance(s, RoboAlignActionSafetyStep)).anchor_to_state

    assert anchored(4) and not anchored(14)  # so101_lang: 14-D state beside 4-D delta actions


def test_finding6_a_saved_null_max_delta_is_refused_at_load(tmp_path):
    step = RoboAlignActionSafetyStep(max_delta=5.0)
    pipeline = PolicyProcessorPipeline(steps=[step], name="policy_postprocessor",
                                       to_transition=policy_action_to_transition,
                                       to_output=transition_to_policy_action)  # fmt: skip
    pipeline.save_pretrained(tmp_path)
    path = tmp_path / "policy_postprocessor.json"
    saved = json.loads(path.read_text())
    saved["steps"][0]["config"]["max_delta"] = None
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="max_delta is null"):
        PolicyProcessorPipeline.from_pretrained(tmp_path, config_filename="policy_postprocessor.json",
                                                to_transition=policy_action_to_transition,
                                                to_output=transition_to_policy_action)  # fmt: skip


@pytest.mark.parametrize("max_delta", ["0", "nan", "-1"])
def test_finding6_calibration_check_refuses_a_bad_max_delta_before_writing(bound_checkpoint, max_delta):
    from lerobot_roboalign.calibration import main_check

    before = (bound_checkpoint / "policy_postprocessor.json").read_text()
    with pytest.raises(SystemExit, match="max_delta"):  # was exit 0, with 0 written into the checkpoint
        main_check([str(ROOT / "calibration/so101_follower.json"), "--robot.type=so101_follower",
                    f"--checkpoint={bound_checkpoint}", f"--max_delta={max_delta}"])  # fmt: skip
    assert (bound_checkpoint / "policy_postprocessor.json").read_text() == before


def test_finding6_calibration_check_refuses_a_checkpoint_whose_state_is_not_the_joints(bound_checkpoint):
    from lerobot_roboalign.calibration import main_check

    config = json.loads((bound_checkpoint / "config.json").read_text())
    config["input_features"][OBS_STATE]["shape"] = [JOINTS + 8]
    (bound_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="observation.state has shape"):
        main_check([str(ROOT / "calibration/so101_follower.json"), "--robot.type=so101_follower",
                    f"--checkpoint={bound_checkpoint}"])  # fmt: skip


def test_finding6_a_max_delta_beyond_the_servos_is_warned(caplog):
    from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
    from lerobot_roboalign.processor_roboalign import safety_overrides

    with caplog.at_level(logging.WARNING, logger="lerobot_roboalign.safety"):
        safety_overrides(RoboAlignConfig(safety_max_delta=1000.0))
    assert "max_delta 1000.0 is above 30" in caplog.text  # was accepted without a word


def test_finding6_client_limits_of_the_wrong_count_are_refused(tmp_path):
    import draccus

    from lerobot_roboalign.async_inference import RoboAlignRobotClientConfig, client_limits

    argv = ["--policy_type=roboalign", f"--pretrained_name_or_path={tmp_path}", "--robot.type=so101_follower",
            "--robot.port=/dev/null", "--actions_per_chunk=16", "--task=pick", "--safety_max_delta=3",
            "--safety_joint_min=[-90,-90,-90,-90,-90]", "--safety_joint_max=[90,90,90,90,90]"]  # fmt: skip
    config = draccus.parse(config_class=RoboAlignRobotClientConfig, args=argv)
    with pytest.raises(ValueError, match="joint_min has 5 values but the action has 6 joints"):
        client_limits(config, JOINTS)  # was a torch broadcast error at the first command


# ---- 7: two policies interleaved in one thread keep their own contexts ----
def test_finding7_interleaved_policies_keep_their_own_settings_and_measurements(bound_checkpoint):
    careful, default = _Loaded(bound_checkpoint, "--safety_max_delta=0.5"), _Loaded(bound_checkpoint)

    def batch(joints: float) -> dict:
        return {"observation.images.front": torch.rand(1, 3, 32, 32), OBS_STATE: torch.full((1, JOINTS), joints),
                "task": ["pick"]}  # fmt: skip

    with torch.no_grad():
        pre_a, pre_b = careful.pre(batch(0.0)), default.pre(batch(50.0))
        policy_a, policy_b = careful.policy.select_action(pre_a), default.policy.select_action(pre_b)
        post_a, post_b = careful.post(policy_a), default.post(policy_b)
    assert careful.step.max_delta == 0.5 and default.step.max_delta == 2.0  # B's was A's, then B's post refused
    assert (post_a - 0.0).abs().max() <= 0.5 + 1e-6 and (post_b - 50.0).abs().max() <= 2.0 + 1e-6
