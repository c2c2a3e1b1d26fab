"""``roboalign rollout check``: each check fails on a set-up broken in its own way, with the fix printed, and
all pass on the virtual SO-101 and Koch set-ups of ``lerobot-rollout`` (LeRobot's robots over a virtual bus)."""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import FOLLOWER_PORT, ROOT, virtualize

from lerobot_roboalign.calibration import main_check as bind
from lerobot_roboalign.preflight import _measurement_age_limit, check_robot_type, main_check, run_checks

MAX_DELTA = 4.0


def _clock(seconds: float) -> Iterator[float]:
    """An injected clock under which one inference takes ``seconds``."""
    ticks = iter([100.0, 100.0 + seconds])
    return lambda: next(ticks)


def _cameras(checkpoint: Path) -> dict[str, tuple[int, int]]:
    features = json.loads((checkpoint / "config.json").read_text())["input_features"]
    return {k.rsplit(".", 1)[-1]: tuple(v["shape"][1:]) for k, v in features.items() if v["type"] == "VISUAL"}


def _setup(arm: str, checkpoint: Path, tmp_path: Path, bound: bool = True) -> tuple[list[str], Path]:
    """argv of a lerobot-rollout on the virtual ``arm`` (robots/<arm>/rollout.yaml), and the checkpoint copy."""
    arm_type = f"{arm}_follower"
    copy = tmp_path / "pretrained_model"
    shutil.copytree(checkpoint, copy)
    if bound:
        bind([str(ROOT / "calibration" / f"{arm_type}.json"), f"--robot.type={arm_type}", f"--checkpoint={copy}",
              f"--max_delta={MAX_DELTA}"])  # fmt: skip
    config = virtualize(ROOT / "robots" / arm / "rollout.yaml", tmp_path, _cameras(checkpoint))
    return [f"--config_path={config}", f"--policy.path={copy}", "--device=cpu"], config


def _run(virtual_hw, argv: list[str], arm_type: str = "so101_follower", calibration: dict | None = None,
         seconds: float = 0.05) -> dict[str, str]:  # fmt: skip
    """Each check's printed line, by name, with the follower (holding ``calibration``) on the virtual port."""
    calibration = calibration or json.loads((ROOT / "calibration" / f"{arm_type}.json").read_text())
    follower = virtual_hw.VirtualArm(arm_type, calibration)
    with virtual_hw.virtual_ports({FOLLOWER_PORT: follower}):
        checks = run_checks(argv, clock=_clock(seconds))
    assert follower.goal_log == [], "the pre-flight wrote a goal position"
    return {check.name: check.line() for check in checks}


def test_robot_type_missing_is_named_with_the_fix(tmp_path):
    config = tmp_path / "rollout.yaml"
    config.write_text(yaml.safe_dump({"robot": {"port": "/dev/ttyACM0"}, "fps": 30}))
    for argv in (
        [f"--config_path={config}", "--policy.path=x"],
        ["--robot.port=/dev/ttyACM0", "--policy.path=x"],
    ):
        check = check_robot_type(argv)
        assert not check.ok and "--robot.type=so101_follower" in check.line() and "Fix:" in check.line()
    assert check_robot_type([f"--config_path={ROOT / 'robots/koch/rollout.yaml'}"]).ok
    missing = check_robot_type([f"--config_path={tmp_path / 'nowhere.yaml'}"]).line()
    assert (
        missing.startswith("[FAIL]") and "does not exist" in missing and "roboalign files export" in missing
    )
    with pytest.raises(SystemExit, match=r"1 check\(s\) failed \(robot type\)"):
        main_check(["--robot.port=/dev/ttyACM0", "--policy.path=x"])


def test_help_prints_its_own_usage(capsys):
    main_check(["--help"])
    assert capsys.readouterr().out.startswith("usage: roboalign rollout check [-h]")


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["so101", "koch"])
def test_every_check_passes_on_the_virtual_arm(arm, roboalign_checkpoint, tmp_path, virtual_hw, capsys):
    argv, _ = _setup(arm, roboalign_checkpoint, tmp_path)
    lines = _run(virtual_hw, argv, f"{arm}_follower")
    assert list(lines) == [
        "robot type",
        "calibration",
        "motors",
        "cameras and state",
        "safety limits",
        "policy",
    ], lines
    assert all(line.startswith("[ ok ]") for line in lines.values()), "\n".join(lines.values())


@pytest.mark.slow
def test_missing_calibration_for_a_new_id_gives_the_install_command(
    roboalign_checkpoint, tmp_path, virtual_hw
):
    argv, _ = _setup("so101", roboalign_checkpoint, tmp_path)
    line = _run(virtual_hw, [*argv, "--robot.id=new_arm"])["calibration"]
    assert line.startswith("[FAIL]") and "EOFError" in line
    assert "roboalign calibration check calibration/so101_follower.json --robot.type=so101_follower " \
           "--install=true --robot.id=new_arm" in line  # fmt: skip


@pytest.mark.slow
def test_a_koch_file_installed_for_an_so101_is_refused(roboalign_checkpoint, tmp_path, virtual_hw):
    argv, config = _setup("so101", roboalign_checkpoint, tmp_path)
    robot = yaml.safe_load(config.read_text())["robot"]
    shutil.copyfile(
        ROOT / "calibration" / "koch_follower.json", Path(robot["calibration_dir"]) / f"{robot['id']}.json"
    )
    lines = _run(virtual_hw, argv)
    assert lines["calibration"].startswith("[FAIL]") and "Is it a Koch calibration?" in lines["calibration"]
    assert "lerobot-calibrate --robot.type=so101_follower" in lines["calibration"]


@pytest.mark.slow
def test_motors_holding_another_calibration_are_found(roboalign_checkpoint, tmp_path, virtual_hw):
    argv, _ = _setup("so101", roboalign_checkpoint, tmp_path)
    other = json.loads((ROOT / "calibration" / "so101_follower.json").read_text())
    other["elbow_flex"]["homing_offset"] += 100  # another arm's (or a re-calibrated) offset
    line = _run(virtual_hw, argv, calibration=other)["motors"]
    assert line.startswith("[FAIL]") and "['elbow_flex']" in line and "lerobot-calibrate" in line


@pytest.mark.slow
def test_a_renamed_camera_gives_the_rename_map(roboalign_checkpoint, tmp_path, virtual_hw):
    argv, config = _setup("so101", roboalign_checkpoint, tmp_path)
    data = yaml.safe_load(config.read_text())
    data["robot"]["cameras"]["top"] = data["robot"]["cameras"].pop("front")
    config.write_text(yaml.safe_dump(data))
    line = _run(virtual_hw, argv)["cameras and state"]
    assert line.startswith("[FAIL]") and "'observation.images.front'" in line
    assert """--rename_map='{"observation.images.top": "observation.images.front"}'""" in line


@pytest.mark.slow
def test_unsafe_limits_are_refused_with_the_bind_command(roboalign_checkpoint, tmp_path, virtual_hw):
    argv, _ = _setup("so101", roboalign_checkpoint, tmp_path)
    wide = "[" + ",".join(["500.0"] * 6) + "]"
    lines = _run(virtual_hw, [*argv, f"--policy.safety_joint_max={wide}", "--robot.max_relative_target=null"])
    line = lines["safety limits"]
    assert (
        line.startswith("[FAIL]")
        and "past this arm's calibrated range" in line
        and "max_relative_target" in line
    )
    assert (
        f"{tmp_path}/calibration/robot/my_so101_follower.json --robot.type=so101_follower --checkpoint="
        in line
    )
    assert _run(virtual_hw, [*argv, "--policy.safety_enabled=false"])["safety limits"].startswith("[FAIL]")


@pytest.mark.slow
def test_an_inference_slower_than_the_measurement_age_limit_is_refused(
    roboalign_checkpoint, tmp_path, virtual_hw
):
    argv, _ = _setup("so101", roboalign_checkpoint, tmp_path)
    limit = _measurement_age_limit(tmp_path / "pretrained_model")
    line = _run(virtual_hw, argv, seconds=limit + 1)["policy"]
    assert (
        line.startswith("[FAIL]")
        and f"{limit + 1:.2f} s" in line
        and f"measurement age limit of {limit:g} s" in line
    )
    assert "--device=cuda" in line and "rollout_rtc.yaml" in line
    given = _run(virtual_hw, [*argv, "--policy.safety_max_measurement_age_s=0.5"], seconds=1.0)["policy"]
    assert given.startswith("[FAIL]") and "measurement age limit of 0.5 s" in given  # the rollout flag wins


@pytest.mark.slow
def test_under_rtc_the_delay_must_fit_the_execution_horizon_and_half_the_chunk(roboalign_checkpoint, tmp_path,
                                                                               virtual_hw):  # fmt: skip
    argv, _ = _setup("so101", roboalign_checkpoint, tmp_path)
    rtc = virtualize(ROOT / "robots" / "so101" / "rollout_rtc.yaml", tmp_path, _cameras(roboalign_checkpoint))
    argv = [f"--config_path={rtc}", *argv[1:]]
    assert _run(virtual_hw, argv, seconds=0.1)["policy"].startswith("[ ok ]")  # 3 steps at 30 fps: fits
    line = _run(virtual_hw, argv, seconds=0.5)["policy"]  # 15 steps: over the horizon (10) and half the chunk
    assert (
        line.startswith("[FAIL]")
        and "15 control steps" in line
        and "--inference.rtc.execution_horizon=16" in line
    )
