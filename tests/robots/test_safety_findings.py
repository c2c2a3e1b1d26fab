"""Issue 24: each finding of the review, reproduced (each test failed on the code before the fix).

Findings 1 and 2 run LeRobot's RTC ``ActionQueue`` with the saved processor steps (the engines themselves are
driven in test_safety_stress.py); findings 3, 6 and 7 load a saved checkpoint the way ``lerobot-rollout``
does (``PreTrainedConfig.from_pretrained`` with the command line's overrides, the policy class's
``from_pretrained``, ``make_pre_post_processors``); 4 (async blending) is
``test_async_client_without_its_guard_breaks_the_invariant`` in test_safety_stress.py; 9 is
test_safety_invariant.py (property + mutation check) and the stress test's check that the rate limit binds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.rtc import ActionQueue, RTCConfig
from lerobot.processor import TransitionKey
from lerobot.utils.constants import OBS_STATE

from lerobot_roboalign.safety import RoboAlignActionSafetyStep, RoboAlignMeasuredStateStep

ROOT = Path(__file__).resolve().parents[2]
CAMERA, JOINTS, CHUNK = "observation.images.front", 6, 4
D = 5.0


def _observe(tap: RoboAlignMeasuredStateStep, joints: float) -> None:
    tap({TransitionKey.OBSERVATION: {OBS_STATE: torch.full((1, 1), joints)}})


def _read_all(queue: ActionQueue) -> list[float]:
    rows = []
    while (row := queue.get()) is not None:
        rows.append(row.item())
    return rows


# ---- 1: an RTC chunk in flight during a reset (episodic rollout, DAgger resume) is only clamped ----
def test_finding1_a_chunk_inferred_before_a_reset_does_not_move_the_arm_from_where_it_now_is():
    tap, step = RoboAlignMeasuredStateStep(), RoboAlignActionSafetyStep(max_delta=D)
    queue = ActionQueue(RTCConfig(enabled=True, execution_horizon=CHUNK))
    _observe(tap, 0.0)  # the inference starts; the arm is at 0
    step.reset()  # the engine is reset meanwhile (LeRobot's RTC engine: policy, processors, queue) ...
    queue.clear()
    arm = 140.0  # ... and the arm is moved back for the next episode (or by the DAgger correction)
    chunk = torch.zeros(1, CHUNK, 1)  # computed for where the arm was
    queue.merge(chunk[0], step.action(chunk).squeeze(0), 0, 0)
    sent = _read_all(queue)
    assert all(abs(command - arm) <= D for command in sent), sent  # was 0.0 (140 from the arm)


# ---- 2: a latency spike: the engine switches chunks at a row the postprocessor could not know ----
def test_finding2_a_chunk_switch_after_a_latency_spike_stays_within_max_delta():
    tap, step = RoboAlignMeasuredStateStep(), RoboAlignActionSafetyStep(max_delta=D)
    queue = ActionQueue(RTCConfig(enabled=True, execution_horizon=16))
    _observe(tap, 0.0)
    ramp = torch.arange(0.0, 16 * D, D)[None, :, None]  # the arm moves D per step
    queue.merge(ramp[0], step.action(ramp).squeeze(0), 0, 0)
    sent = [queue.get().item() for _ in range(3)]
    _observe(tap, sent[-1])  # the next inference starts here ...
    index = queue.get_action_index()
    sent += [queue.get().item() for _ in range(9)]  # ... and takes 9 steps (its delay was expected to be 1)
    back = torch.full((1, 16, 1), -50.0)  # the new chunk turns back
    queue.merge(back[0], step.action(back).squeeze(0), 9, index)
    sent += _read_all(queue)
    steps = torch.tensor(sent).diff().abs()
    assert steps.max() <= D + 1e-6, sent  # was a 45-55 jump at the switch


# ---- 3, 6, 7: limits precedence, one context per policy, checkpoints without safety_link ----
def _checkpoint(directory: Path, backbone: Path, **safety) -> Path:
    """A roboalign checkpoint for a 6-joint arm, saved as lerobot-train saves one (policy + processors)."""
    from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy
    from lerobot_roboalign.processor_roboalign import make_roboalign_pre_post_processors

    config = RoboAlignConfig(
        vlm_model_name=str(backbone), vlm_layer=2, head_hidden_size=64, head_num_layers=2, head_num_heads=4,
        image_resolution=(56, 56), device="cpu", chunk_size=CHUNK, n_action_steps=CHUNK, chunk_blend_steps=0,
        input_features={CAMERA: PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
                        OBS_STATE: PolicyFeature(FeatureType.STATE, (JOINTS,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (JOINTS,))}, **safety,
    )  # fmt: skip
    wide = {"mean": torch.zeros(JOINTS), "std": torch.ones(JOINTS) * 50, "min": -torch.ones(JOINTS) * 170,
            "max": torch.ones(JOINTS) * 170}  # fmt: skip
    torch.manual_seed(0)
    RoboAlignPolicy(config).save_pretrained(directory)
    for pipeline in make_roboalign_pre_post_processors(config, dataset_stats={"action": wide, OBS_STATE: wide}):
        pipeline.save_pretrained(directory)
    return directory


class _Loaded:
    """A policy and its processors loaded as lerobot-rollout loads them, with ``--policy.*`` flags."""

    def __init__(self, checkpoint: Path, *flags: str) -> None:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import make_pre_post_processors

        from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

        config = PreTrainedConfig.from_pretrained(checkpoint, cli_overrides=list(flags))
        config.pretrained_path = checkpoint
        self.policy = RoboAlignPolicy.from_pretrained(checkpoint, config=config).eval()
        self.pre, self.post = make_pre_post_processors(config, pretrained_path=str(checkpoint))
        self.step = next(s for s in self.post.steps if isinstance(s, RoboAlignActionSafetyStep))

    def act(self, joints: float) -> torch.Tensor:
        batch = {CAMERA: torch.rand(1, 3, 32, 32), OBS_STATE: torch.full((1, JOINTS), joints), "task": ["pick"]}
        with torch.no_grad():
            return self.post(self.policy.select_action(self.pre(batch)))


@pytest.fixture
def bound_checkpoint(tmp_path, tiny_qwen25_backbone) -> Path:
    """Trained with --policy.safety_max_delta=10 and +-180 limits, then bound with calibration check
    --max_delta=2 (the review's setting)."""
    from lerobot_roboalign.calibration import main_check

    checkpoint = _checkpoint(tmp_path / "pretrained_model", tiny_qwen25_backbone, safety_max_delta=10.0,
                             safety_joint_min=[-180.0] * JOINTS, safety_joint_max=[180.0] * JOINTS)  # fmt: skip
    main_check([str(ROOT / "calibration/so101_follower.json"), "--robot.type=so101_follower",
                f"--checkpoint={checkpoint}", "--max_delta=2"])  # fmt: skip
    return checkpoint


def test_finding3_rollout_flags_beat_calibration_check_which_beats_the_training_config(bound_checkpoint):
    from lerobot_roboalign.calibration import DeviceSpec, check_calibration, joint_limits

    spec = DeviceSpec(type="so101_follower")
    low, high = joint_limits(check_calibration(ROOT / "calibration/so101_follower.json", spec), spec)
    loaded = _Loaded(bound_checkpoint)
    loaded.act(0.0)
    # was max_delta 10 and +-180: config.json's training values came back as rollout flags
    assert loaded.step.max_delta == 2.0
    assert loaded.step.joint_min == pytest.approx(low) and loaded.step.joint_max == pytest.approx(high)
    flagged = _Loaded(bound_checkpoint, "--safety_max_delta=1.5", "--safety_joint_max=[9,9,9,9,9,9]")
    flagged.act(0.0)
    assert flagged.step.max_delta == 1.5 and flagged.step.joint_max == [9.0] * JOINTS
    assert flagged.step.joint_min == pytest.approx(low)  # what is not given keeps the bound value


def test_finding6_two_policies_from_one_checkpoint_keep_their_own_settings(bound_checkpoint):
    careful, default = _Loaded(bound_checkpoint, "--safety_max_delta=0.5"), _Loaded(bound_checkpoint)
    for _ in range(2):
        careful.act(0.0)
        default.act(0.0)
    assert careful.step.max_delta == 0.5 and default.step.max_delta == 2.0  # were 2.0 and 2.0 (the last published)
    careful.policy.reset()  # one policy's episode ends: the other's rate limit goes on from its last command
    assert (default.act(50.0) - default.act(50.0)).abs().max() <= 2.0 + 1e-6


def test_finding7_a_checkpoint_without_safety_link_obeys_flags_and_resets(tmp_path, tiny_qwen25_backbone):
    checkpoint = _checkpoint(tmp_path / "pretrained_model", tiny_qwen25_backbone)
    config = json.loads((checkpoint / "config.json").read_text())
    config.pop("safety_link")  # saved before safety_link existed
    (checkpoint / "config.json").write_text(json.dumps(config))
    for name in ("policy_preprocessor.json", "policy_postprocessor.json"):
        pipeline = json.loads((checkpoint / name).read_text())
        for step in pipeline["steps"]:
            step.get("config", {}).pop("link", None)
        (checkpoint / name).write_text(json.dumps(pipeline))
    loaded = _Loaded(checkpoint, "--safety_max_delta=1")
    loaded.act(0.0)
    assert loaded.step.max_delta == 1.0  # was 5.0: the flag went to a fresh link nobody listened to
    loaded.policy.reset()  # lerobot-eval resets only the policy; the arm is elsewhere now
    first = loaded.act(80.0)
    assert ((first - 80.0).abs() <= 1.0 + 1e-6).all(), first  # was limited from the last episode's command


# ---- 5: calibration check --checkpoint on a checkpoint without a safety step ----
def test_finding5_binding_adds_a_safety_step_with_a_rate_limit(tmp_path, caplog):
    from lerobot_roboalign.calibration import bind_to_checkpoint

    (tmp_path / "policy_postprocessor.json").write_text(json.dumps(
        {"name": "policy_postprocessor", "steps": [{"registry_name": "unnormalizer_processor", "config": {}}]}))
    with caplog.at_level(logging.WARNING, logger="lerobot_roboalign.calibration"):
        bind_to_checkpoint(tmp_path, ([-10.0], [10.0]), max_delta=None)
    steps = json.loads((tmp_path / "policy_postprocessor.json").read_text())["steps"]
    assert steps[1]["registry_name"] == "roboalign_action_safety"
    assert steps[1]["config"]["max_delta"] == 5.0  # was absent: no rate limit at all
    assert "no rate limit" in caplog.text


# ---- 8: calibration check accepts another arm's or a leader's file ----
@pytest.mark.parametrize(
    ("file", "robot_type", "match"),
    [
        ("koch_follower.json", "so101_follower", "Koch calibration"),
        ("so101_leader.json", "so101_follower", "names a leader"),
        ("koch_leader.json", "koch_follower", "drive modes"),
        ("koch_follower.json", "koch_leader", "drive modes"),
    ],
)
def test_finding8_calibration_check_refuses_another_arms_file(file, robot_type, match, tmp_path):
    from lerobot_roboalign.calibration import CalibrationError, DeviceSpec, check_calibration

    with pytest.raises(CalibrationError, match=match):
        check_calibration(ROOT / "calibration" / file, DeviceSpec(type=robot_type))


def test_finding8_a_koch_file_whose_offsets_fit_a_feetech_is_refused_for_an_so101(tmp_path):
    from lerobot_roboalign.calibration import CalibrationError, DeviceSpec, check_calibration

    data = json.loads((ROOT / "calibration/koch_follower.json").read_text())
    for entry in data.values():
        entry["homing_offset"] = max(-2047, min(2047, entry["homing_offset"]))  # passes the offset check
    path = tmp_path / "arm.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="Koch calibration"):
        check_calibration(path, DeviceSpec(type="so101_follower"))


def test_finding8_an_so_shoulder_pan_over_the_full_turn_is_refused(tmp_path):
    from lerobot_roboalign.calibration import CalibrationError, DeviceSpec, check_calibration

    data = json.loads((ROOT / "calibration/so101_follower.json").read_text())
    data["shoulder_pan"].update(range_min=0, range_max=4095)
    path = tmp_path / "arm.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="shoulder_pan"):
        check_calibration(path, DeviceSpec(type="so101_follower"))


# ---- Also: a state/image batch size mismatch ----
def test_a_state_and_image_batch_mismatch_names_the_problem_and_the_fix():
    from lerobot_roboalign.processor_roboalign import InputSpec, validate_batch

    batch = {CAMERA: torch.rand(1, 3, 32, 32), OBS_STATE: torch.zeros(2, JOINTS), "task": ["pick", "pick"]}
    with pytest.raises(ValueError, match="Batch size mismatch.*Fix"):
        validate_batch(InputSpec((CAMERA,), JOINTS, JOINTS), batch, require_action=False)


# ---- 4: the async client's command line (the stress test runs the client itself) ----
def test_the_async_client_command_takes_its_safety_flags_and_needs_a_rate_limit(tmp_path):
    import draccus

    from lerobot_roboalign.async_inference import RoboAlignRobotClientConfig, client_limits

    argv = ["--policy_type=roboalign", f"--pretrained_name_or_path={tmp_path}", "--robot.type=so101_follower",
            "--robot.port=/dev/null", "--actions_per_chunk=16", "--task=pick", "--safety_max_delta=3",
            "--safety_joint_min=[-90]", "--safety_joint_max=[90]"]  # fmt: skip
    config = draccus.parse(config_class=RoboAlignRobotClientConfig, args=argv)
    limits = client_limits(config, JOINTS)
    assert limits.max_delta.tolist() == [3.0] * JOINTS and limits.high.tolist() == [90.0] * JOINTS
    config.safety_max_delta = None  # and no checkpoint on this machine to read it from
    with pytest.raises(ValueError, match="--safety_max_delta"):
        client_limits(config, JOINTS)
