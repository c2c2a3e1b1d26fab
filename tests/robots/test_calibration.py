"""``roboalign calibration check``: bad files are refused with the problem and the fix named."""

import json
import shutil
from pathlib import Path

import pytest

from lerobot_roboalign import calibration as cal
from lerobot_roboalign.calibration import DeviceSpec, check_calibration, main_check

EXAMPLES = Path(__file__).resolve().parents[2] / "calibration"


@pytest.mark.parametrize("arm_type", cal.SUPPORTED_TYPES)
def test_example_files_are_valid(arm_type):
    calibration = check_calibration(EXAMPLES / f"{arm_type}.json", DeviceSpec(type=arm_type))
    assert [c.id for c in calibration.values()] == [1, 2, 3, 4, 5, 6]


def _broken(tmp_path, arm_type, edit) -> Path:
    data = json.loads((EXAMPLES / f"{arm_type}.json").read_text())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("arm_type", "edit", "message"),
    [
        ("so101_follower", lambda d: d.pop("gripper"), r"missing motors \['gripper'\]"),
        ("so100_leader", lambda d: d.update(extra_joint=d["gripper"]), r"unexpected motors \['extra_joint'\]"),
        ("koch_follower", lambda d: d["elbow_flex"].update(range_min=3000, range_max=1000), "inverted range"),
        ("so101_leader", lambda d: d["wrist_flex"].update(range_min=2000, range_max=2000), "empty range"),
        ("so100_follower", lambda d: d["shoulder_pan"].update(homing_offset=4000), "out of range ±2047"),
        ("koch_leader", lambda d: d["wrist_roll"].update(homing_offset=2_000_000), "out of range ±1044479"),
        ("so101_follower", lambda d: d["elbow_flex"].update(id=7), "id 7 does not match the arm's id 3"),
        ("koch_follower", lambda d: d["gripper"].pop("drive_mode"), r"missing \['drive_mode'\]"),
        ("so101_follower", lambda d: d["gripper"].update(range_max=5000), "leaves the encoder's 0..4095"),
    ],
)
def test_bad_files_are_rejected_with_the_fix(tmp_path, arm_type, edit, message):
    path = _broken(tmp_path, arm_type, edit)
    with pytest.raises(cal.CalibrationError, match=message) as err:
        check_calibration(path, DeviceSpec(type=arm_type))
    assert any(fix in str(err.value) for fix in ("lerobot-calibrate", "add them", "remove them", "set \"id\"", "swap"))


def test_cli_reports_every_problem_and_installs_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("lerobot.robots.robot.HF_LEROBOT_CALIBRATION", tmp_path / "lerobot_cal")
    path = _broken(tmp_path, "so101_follower", lambda d: (d.pop("gripper"), d["elbow_flex"].update(id=9)))
    with pytest.raises(SystemExit) as exit_info:
        main_check([str(path), "--robot.type=so101_follower", "--robot.id=arm", "--install=true"])
    assert "missing motors" in str(exit_info.value) and "id 9" in str(exit_info.value)
    assert not list((tmp_path / "lerobot_cal").rglob("*.json"))


def test_install_puts_the_file_where_lerobot_loads_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("lerobot.robots.robot.HF_LEROBOT_CALIBRATION", tmp_path)
    monkeypatch.setattr("lerobot.teleoperators.teleoperator.HF_LEROBOT_CALIBRATION", tmp_path)
    main_check([str(EXAMPLES / "so101_follower.json"), "--robot.type=so101_follower", "--robot.id=arm", "--install=true"])
    main_check([str(EXAMPLES / "koch_leader.json"), "--robot.type=koch_leader", "--robot.id=lead", "--install=true"])
    robot = cal.make_device(DeviceSpec(type="so101_follower", id="arm"))
    assert robot.calibration_fpath.is_file() and robot.calibration  # LeRobot loaded it on construction
    assert robot.calibration["gripper"].range_max == 3492
    assert (tmp_path / "teleoperators" / "koch_leader" / "lead.json").is_file()
    assert "Installed" in capsys.readouterr().out


def test_install_without_id_names_the_flag(tmp_path):
    with pytest.raises(SystemExit, match="--robot.id=NAME"):
        main_check([str(EXAMPLES / "so101_follower.json"), "--robot.type=so101_follower", "--install=true"])


def test_unknown_type_lists_the_supported_ones():
    with pytest.raises(SystemExit, match="so101_follower"):
        main_check([str(EXAMPLES / "so101_follower.json"), "--robot.type=ur5"])


def test_joint_limits_follow_the_arms_units():
    so101 = check_calibration(EXAMPLES / "so101_follower.json", DeviceSpec(type="so101_follower"))
    low, high = cal.joint_limits(so101, DeviceSpec(type="so101_follower"))
    assert high[0] == pytest.approx((3292 - 758) / 2 * 360 / 4095) and low[0] == -high[0]
    assert (low[-1], high[-1]) == (0.0, 100.0)  # gripper: 0..100 %
    koch = check_calibration(EXAMPLES / "koch_follower.json", DeviceSpec(type="koch_follower"))
    assert cal.joint_limits(koch, DeviceSpec(type="koch_follower"))[1][:5] == [100.0] * 5


def test_bind_writes_limits_into_a_saved_postprocessor(tmp_path):
    from lerobot.processor import PolicyProcessorPipeline, UnnormalizerProcessorStep
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    PolicyProcessorPipeline(
        steps=[UnnormalizerProcessorStep(features={}, norm_map={})],
        name="policy_postprocessor",
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    ).save_pretrained(tmp_path)
    main_check([str(EXAMPLES / "so101_follower.json"), "--robot.type=so101_follower",
                f"--checkpoint={tmp_path}", "--max_delta=3.0"])  # fmt: skip
    loaded = PolicyProcessorPipeline.from_pretrained(tmp_path, config_filename="policy_postprocessor.json")
    step = loaded.steps[1]
    assert type(step).__name__ == "RoboAlignActionSafetyStep" and step.max_delta == 3.0
    assert step.joint_max[-1] == 100.0
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize(("file_type", "robot_type"), [("so101_follower", "koch_follower"), ("so100_leader", "koch_leader")])
def test_an_so_file_is_refused_for_a_koch(file_type, robot_type):
    with pytest.raises(cal.CalibrationError, match="Is it an SO-100/SO-101 calibration"):
        check_calibration(EXAMPLES / f"{file_type}.json", DeviceSpec(type=robot_type))


def _postprocessor_with_safety(directory: Path, joint_min: list[float], joint_max: list[float]) -> None:
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    from lerobot_roboalign.safety import RoboAlignActionSafetyStep

    PolicyProcessorPipeline(
        steps=[RoboAlignActionSafetyStep(max_delta=5.0, joint_min=joint_min, joint_max=joint_max)],
        name="policy_postprocessor",
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    ).save_pretrained(directory)


def test_bind_keeps_the_tighter_of_dataset_and_calibrated_limits_unless_asked(tmp_path):
    dataset_min, dataset_max = [-30.0, -100.0, -50.0, -40.0, -100.0, 10.0], [30.0, 50.0, 100.0, 40.0, 100.0, 60.0]
    _postprocessor_with_safety(tmp_path, dataset_min, dataset_max)
    main_check([str(EXAMPLES / "koch_follower.json"), "--robot.type=koch_follower", f"--checkpoint={tmp_path}"])
    config = json.loads((tmp_path / "policy_postprocessor.json").read_text())["steps"][0]["config"]
    # Koch calibrated ranges are LeRobot's own -100..100 (gripper 0..100): the dataset range is kept
    assert config["joint_min"] == dataset_min and config["joint_max"] == dataset_max
    main_check([str(EXAMPLES / "koch_follower.json"), "--robot.type=koch_follower", f"--checkpoint={tmp_path}",
                "--replace_limits=true"])  # fmt: skip
    config = json.loads((tmp_path / "policy_postprocessor.json").read_text())["steps"][0]["config"]
    assert config["joint_max"] == [100.0] * 6 and config["joint_min"] == [-100.0] * 5 + [0.0]


def test_bind_refuses_limits_that_do_not_overlap(tmp_path):
    _postprocessor_with_safety(tmp_path, [500.0] * 6, [600.0] * 6)  # e.g. a policy trained on raw ticks
    with pytest.raises(SystemExit, match="do not overlap"):
        main_check([str(EXAMPLES / "so101_follower.json"), "--robot.type=so101_follower", f"--checkpoint={tmp_path}"])
