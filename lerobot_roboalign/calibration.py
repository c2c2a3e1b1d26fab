"""``roboalign calibration check``: validate a LeRobot calibration file before any motor moves.

A calibration file maps each motor name to ``{id, drive_mode, homing_offset, range_min,
range_max}`` (LeRobot's :class:`~lerobot.motors.MotorCalibration`). A wrong file does not
fail loudly in LeRobot: the arm is written wrong offsets or limits and then moves. This
command checks a file against the arm's motor table, optionally installs it where LeRobot
looks for it (``$HF_LEROBOT_CALIBRATION/{robots,teleoperators}/<name>/<id>.json``), and can
bind the calibrated joint ranges to a RoboAlign checkpoint's safety step.

    roboalign calibration check calibration/so101_follower.json --robot.type=so101_follower
    roboalign calibration check FILE --robot.type=so101_follower --install=true --robot.id=my_arm
    roboalign calibration check FILE --robot.type=so101_follower --checkpoint=outputs/.../pretrained_model
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import draccus

if TYPE_CHECKING:
    from lerobot.motors import MotorCalibration

# LeRobot, torch and this package's policy modules are imported where used: `roboalign calibration check --help`
# stays fast.
logger = logging.getLogger(__name__)

SUPPORTED_TYPES = (
    "so100_follower",
    "so101_follower",
    "koch_follower",
    "so100_leader",
    "so101_leader",
    "koch_leader",
)
# Dynamixel X-series Homing_Offset register range (e-manual); Feetech's comes from its sign bit.
DYNAMIXEL_MAX_HOMING_OFFSET = 1_044_479
POSTPROCESSOR_FILE = "policy_postprocessor.json"
PREPROCESSOR_FILE = "policy_preprocessor.json"
# Joints that lerobot-calibrate does not record but sets to the full encoder turn (0..4095),
# per arm family (koch_follower/koch_leader and so_follower/so_leader ``calibrate()`` in LeRobot 0.6.1).
FULL_TURN_MOTORS = {"koch": ("shoulder_pan", "wrist_roll"), "so": ("wrist_roll",)}
# Joints lerobot-calibrate records by moving them: never the full turn on that family (a file with it is another arm's).
RECORDED_MOTORS = {"so": ("shoulder_pan",)}
# Drive modes lerobot-calibrate writes (koch_leader inverts elbow_flex; the follower inverts nothing).
DRIVE_MODES = {"koch_leader": {"elbow_flex": 1}, "koch_follower": {}}


class CalibrationError(ValueError):
    """A calibration file that must not reach the motors; the message lists every problem and its fix."""


@dataclass
class DeviceSpec:
    # so100_follower, so101_follower, koch_follower, so100_leader, so101_leader or koch_leader.
    type: str = ""
    # Name of this arm; LeRobot stores its calibration as <id>.json.
    id: str | None = None
    # Motor normalisation used at rollout (degrees or -100..100); None: the arm's LeRobot default.
    use_degrees: bool | None = None


@dataclass
class CalibrationCheckConfig:
    # The calibration file (also accepted as the first positional argument).
    file: Path | None = None
    robot: DeviceSpec = field(default_factory=DeviceSpec)
    # Copy the checked file where LeRobot looks for it (needs --robot.id).
    install: bool = False
    # A RoboAlign pretrained_model directory whose safety step gets this arm's calibrated ranges.
    checkpoint: Path | None = None
    # With --checkpoint: also set the safety step's per-step rate limit (joint units).
    max_delta: float | None = None
    # With --checkpoint: replace the checkpoint's limits by the calibrated ranges instead of keeping,
    # per joint, the tighter of the two (the dataset's action range + margin is usually tighter).
    replace_limits: bool = False


def _calibration_keys() -> set[str]:
    from lerobot.motors import MotorCalibration

    return {f.name for f in fields(MotorCalibration)}


def make_device(spec: DeviceSpec, calibration_dir: Path | None = None):
    """An unconnected LeRobot robot or teleoperator of ``spec.type`` (gives its motor table and paths)."""
    from lerobot.robots import RobotConfig, koch_follower, make_robot_from_config, so_follower  # noqa: F401
    from lerobot.teleoperators import (  # noqa: F401
        TeleoperatorConfig,
        koch_leader,
        make_teleoperator_from_config,
        so_leader,
    )

    if not spec.type:
        raise CalibrationError(
            f"The arm's type is missing (a calibration file does not say which arm it is for): add --robot.type=TYPE, "
            f"one of {', '.join(SUPPORTED_TYPES)}, e.g. --robot.type=so101_follower."
        )
    if spec.type not in SUPPORTED_TYPES:
        raise CalibrationError(
            f"Unsupported --robot.type={spec.type!r}: use one of {', '.join(SUPPORTED_TYPES)}."
        )
    is_robot = spec.type in RobotConfig.get_known_choices()
    config_cls = (RobotConfig if is_robot else TeleoperatorConfig).get_choice_class(spec.type)
    kwargs = {"port": "/dev/null", "id": spec.id or "unnamed", "calibration_dir": calibration_dir}
    if spec.use_degrees is not None and "use_degrees" in {f.name for f in fields(config_cls)}:
        kwargs["use_degrees"] = spec.use_degrees
    config = config_cls(**kwargs)
    return make_robot_from_config(config) if is_robot else make_teleoperator_from_config(config)


def _max_homing_offset(bus, model: str) -> int:
    """Feetech stores the offset sign-magnitude (the table gives the sign bit); Dynamixel in 4 bytes."""
    from lerobot.motors.feetech import FeetechMotorsBus

    if isinstance(bus, FeetechMotorsBus):
        return (1 << bus.model_encoding_table[model]["Homing_Offset"]) - 1
    return DYNAMIXEL_MAX_HOMING_OFFSET


def _motor_problems(name: str, entry: dict, bus) -> list[str]:
    from lerobot.motors.feetech import FeetechMotorsBus

    motor = bus.motors[name]
    problems = []
    keys = _calibration_keys()
    missing, extra = keys - set(entry), set(entry) - keys
    if missing or extra:
        return [
            f"motor '{name}': keys must be exactly {sorted(keys)} "
            f"(missing {sorted(missing)}, unexpected {sorted(extra)}); re-run lerobot-calibrate."
        ]
    not_int = [k for k in keys if not isinstance(entry[k], int) or isinstance(entry[k], bool)]
    if not_int:
        return [f"motor '{name}': {sorted(not_int)} must be integers (raw motor units); fix the values."]
    if entry["id"] != motor.id:
        problems.append(
            f"motor '{name}': id {entry['id']} does not match the arm's id {motor.id}; "
            f"set \"id\": {motor.id} or check you picked the right --robot.type."
        )
    resolution = bus.model_resolution_table[motor.model]
    low, high = entry["range_min"], entry["range_max"]
    if low == high:
        problems.append(
            f"motor '{name}': empty range (range_min == range_max == {low}); "
            "re-run lerobot-calibrate and move this joint through its whole range."
        )
    elif low > high:
        problems.append(
            f"motor '{name}': inverted range (range_min {low} > range_max {high}); swap them, "
            "or re-run lerobot-calibrate (direction is set by drive_mode, not by the range order)."
        )
    if not (0 <= low < resolution and 0 <= high < resolution):
        problems.append(
            f"motor '{name}': range [{low}, {high}] leaves the encoder's 0..{resolution - 1}; "
            "re-run lerobot-calibrate."
        )
    limit = _max_homing_offset(bus, motor.model)
    if abs(entry["homing_offset"]) > limit:
        problems.append(
            f"motor '{name}': homing_offset {entry['homing_offset']} is out of range ±{limit} for a "
            f"{motor.model}; re-run lerobot-calibrate with the arm in the middle of its range."
        )
    family = "so" if isinstance(bus, FeetechMotorsBus) else "koch"
    resolution_max = resolution - 1
    if name in FULL_TURN_MOTORS[family] and (low, high) != (0, resolution_max):
        other = "an SO-100/SO-101" if family == "koch" else "a Koch"
        joints = " and ".join(FULL_TURN_MOTORS[family])
        problems.append(
            f"motor '{name}': lerobot-calibrate sets {joints} to the full turn [0, {resolution_max}] on this "
            f"arm, but this file has [{low}, {high}]. Is it {other} calibration? Pass the right --robot.type "
            "or re-run lerobot-calibrate."
        )
    if family in RECORDED_MOTORS and name in RECORDED_MOTORS[family] and (low, high) == (0, resolution_max):
        problems.append(
            f"motor '{name}': the full turn [0, {resolution_max}], which lerobot-calibrate never records for this "
            "joint on an SO-100/SO-101 (it does on a Koch). Is it a Koch calibration? Pass the right --robot.type "
            "or re-run lerobot-calibrate, moving this joint through its range."
        )
    if entry["drive_mode"] not in (0, 1):
        problems.append(f"motor '{name}': drive_mode must be 0 or 1 (got {entry['drive_mode']}).")
    return problems


def _role_problems(path: Path, data: dict, spec: DeviceSpec) -> list[str]:
    """A leader's file given for a follower (or the reverse): by LeRobot's drive modes, else by its path."""
    role, other = ("leader", "follower") if spec.type.endswith("_leader") else ("follower", "leader")
    expected = DRIVE_MODES.get(spec.type)
    if expected is not None:
        wrong = {m: e.get("drive_mode") for m, e in data.items() if isinstance(e, dict)
                 and e.get("drive_mode") != expected.get(m, 0)}  # fmt: skip
        if wrong:
            return [
                f"drive modes {wrong} are not what lerobot-calibrate writes for a {spec.type} "
                f"({expected or 'all 0'}): is it a {other}'s file? Pass the {role}'s calibration or "
                f"--robot.type={spec.type.replace(role, other)}."
            ]
    names = [part.lower() for part in path.resolve().parts[-2:]]  # LeRobot's <kind>_<role>/<id>.json
    if any(other in part for part in names):
        return [
            f"the path {path} names a {other} arm, but --robot.type={spec.type} is a {role}: pass the {role}'s "
            f"calibration file, or --robot.type={spec.type.replace(role, other)}."
        ]
    return []


def check_calibration(path: Path, spec: DeviceSpec) -> dict[str, MotorCalibration]:
    """Parse and validate ``path`` for an arm of ``spec.type``; raise :class:`CalibrationError` listing all problems."""
    from lerobot.motors import MotorCalibration

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"Calibration file {path} does not exist; pass the path to a .json file.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CalibrationError(f"{path} is not valid JSON ({err}); fix the file or re-run lerobot-calibrate.")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CalibrationError(f"{path} must map motor names to {{id, drive_mode, ...}} objects.")
    with tempfile.TemporaryDirectory() as tmp:
        bus = make_device(spec, Path(tmp)).bus
    expected, found = list(bus.motors), set(data)
    problems = []
    if missing := [m for m in expected if m not in found]:
        problems.append(f"missing motors {missing}: add them, or check --robot.type={spec.type} is right.")
    if extra := sorted(found - set(expected)):
        problems.append(f"unexpected motors {extra}: a {spec.type} has {expected}; remove them.")
    for name in expected:
        if name in data:
            problems.extend(_motor_problems(name, data[name], bus))
    problems.extend(_role_problems(path, data, spec))
    if problems:
        raise CalibrationError(
            f"Calibration file {path} is not valid for a {spec.type}:\n  - " + "\n  - ".join(problems)
        )
    return {name: MotorCalibration(**data[name]) for name in expected}


def joint_limits(calibration: dict[str, MotorCalibration], spec: DeviceSpec) -> tuple[list[float], list[float]]:
    """Calibrated range of each joint in the units LeRobot reads/writes at rollout (action order)."""
    from lerobot.motors import MotorNormMode

    with tempfile.TemporaryDirectory() as tmp:
        bus = make_device(spec, Path(tmp)).bus
    low, high = [], []
    for name, motor in bus.motors.items():
        cal = calibration[name]
        if motor.norm_mode is MotorNormMode.DEGREES:
            half = (cal.range_max - cal.range_min) / 2 * 360 / (bus.model_resolution_table[motor.model] - 1)
            low.append(-half)
            high.append(half)
        elif motor.norm_mode is MotorNormMode.RANGE_0_100:
            low.append(0.0)
            high.append(100.0)
        else:
            low.append(-100.0)
            high.append(100.0)
    return low, high


def install_calibration(path: Path, spec: DeviceSpec) -> Path:
    """Copy a checked file to ``<calibration dir>/<id>.json`` where LeRobot loads it on connect."""
    if not spec.id:
        raise CalibrationError("--install=true needs the arm's name: add --robot.id=NAME (the id you run with).")
    target = make_device(spec).calibration_fpath
    shutil.copyfile(path, target)
    return target


def _tighter(old: list[float] | None, new: list[float], pick) -> list[float]:
    return list(new) if old is None else [pick(a, b) for a, b in zip(old, new, strict=True)]


def _link_processors(checkpoint: Path, postprocessor: dict) -> None:
    """Upgrade a checkpoint saved before the measured-state step: add it, linked to safety step and policy."""
    from .safety import MEASURED_STATE_STEP_NAME, SAFETY_STEP_NAME

    config_path, pre_path = checkpoint / "config.json", checkpoint / PREPROCESSOR_FILE
    if not (config_path.is_file() and pre_path.is_file()):
        return
    config, pre = json.loads(config_path.read_text()), json.loads(pre_path.read_text())
    link = config.get("safety_link") or uuid.uuid4().hex
    names = [s.get("registry_name") for s in pre["steps"]]
    if MEASURED_STATE_STEP_NAME not in names:
        at = names.index("normalizer_processor") if "normalizer_processor" in names else len(names)
        pre["steps"].insert(at, {"registry_name": MEASURED_STATE_STEP_NAME, "config": {"link": link}})
        pre_path.write_text(json.dumps(pre, indent=2))
    config["safety_link"] = link
    config_path.write_text(json.dumps(config, indent=4))
    for step in postprocessor["steps"]:
        if step.get("registry_name") == SAFETY_STEP_NAME:
            step["config"].setdefault("link", link)


def bind_to_checkpoint(
    checkpoint: Path, limits: tuple[list[float], list[float]], max_delta: float | None, replace: bool = False
) -> tuple[Path, list[float], list[float]]:
    """Write the calibrated limits into the checkpoint's safety step (added after unnormalisation if absent).

    Per joint the tighter of the checkpoint's limits and the calibrated range is kept, unless ``replace``:
    on a Koch the calibrated range is exactly LeRobot's own clamp, so it alone would add nothing.
    """
    from .processor_roboalign import DEFAULT_SAFETY_MAX_DELTA
    from .safety import SAFETY_STEP_NAME

    checkpoint = Path(checkpoint)
    check_policy_type(checkpoint)
    config_path = checkpoint / POSTPROCESSOR_FILE
    if not config_path.is_file():
        raise CalibrationError(
            f"{config_path} not found: --checkpoint must be a pretrained_model directory saved by lerobot-train."
        )
    pipeline = json.loads(config_path.read_text())
    _check_sizes(checkpoint, len(limits[0]), max_delta)
    steps = pipeline["steps"]
    step = next((s for s in steps if s.get("registry_name") == SAFETY_STEP_NAME), None)
    if step is None:
        names = [s.get("registry_name") for s in steps]
        at = names.index("unnormalizer_processor") + 1 if "unnormalizer_processor" in names else 0
        step = {"registry_name": SAFETY_STEP_NAME, "config": {"enabled": True}}
        steps.insert(at, step)
    if max_delta is None and step["config"].get("max_delta") is None:
        max_delta = DEFAULT_SAFETY_MAX_DELTA
        logger.warning(
            "The checkpoint's safety step had no rate limit: set max_delta=%s (joint units per control step). "
            "Pass --max_delta to choose another.", max_delta,
        )  # fmt: skip
    low, high = limits
    if not replace:
        low = _tighter(step["config"].get("joint_min"), low, max)
        high = _tighter(step["config"].get("joint_max"), high, min)
    if any(lo > hi for lo, hi in zip(low, high, strict=True)):
        raise CalibrationError(
            f"the checkpoint's joint limits and the calibrated ranges do not overlap (min {low}, "
            f"max {high}): "
            "was the policy trained on another arm or with other units (--robot.use_degrees)? "
            "Pass --replace_limits=true to use the calibrated ranges alone."
        )
    step["config"]["joint_min"], step["config"]["joint_max"] = low, high
    bound = {"joint_min", "joint_max", *(["max_delta"] if max_delta is not None else [])}
    step["config"]["bound"] = sorted(bound | set(step["config"].get("bound") or []))
    if max_delta is not None:
        step["config"]["max_delta"] = max_delta
    _link_processors(checkpoint, pipeline)
    _unset_training_flags(checkpoint)
    config_path.write_text(json.dumps(pipeline, indent=2))
    return config_path, low, high


def check_policy_type(checkpoint: Path) -> None:
    """A checkpoint of another policy has no RoboAlign safety step to bind: name its type, not a missing file."""
    config_path = Path(checkpoint) / "config.json"
    policy_type = json.loads(config_path.read_text()).get("type") if config_path.is_file() else "roboalign"
    if policy_type != "roboalign":
        raise CalibrationError(
            f"{checkpoint} is a {policy_type!r} policy, not a RoboAlign one: only a checkpoint trained with "
            "--policy.type=roboalign has the safety step this binds the calibrated ranges to. Pass a RoboAlign "
            "checkpoint, or drop --checkpoint (and use --robot.max_relative_target to bound that policy)."
        )


def _check_sizes(checkpoint: Path, joints: int, max_delta: float | None) -> None:
    """Refuse a rate limit that is not finite or not > 0, an arm whose joint count is not the action's, and a
    checkpoint whose observation.state differs in size from its action (commands could not be compared with the
    measured joints); warn above the servos' reach. Caught here, not on the arm at the next rollout."""
    from .safety import validate_max_delta

    try:
        validate_max_delta(max_delta, required=False)
    except ValueError as err:
        raise CalibrationError(f"--max_delta={max_delta}: {err}") from None
    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    action = ((config.get("output_features") or {}).get("action") or {}).get("shape")
    state = ((config.get("input_features") or {}).get("observation.state") or {}).get("shape")
    if action and action[-1] != joints:
        raise CalibrationError(
            f"this arm has {joints} joints but the checkpoint's action has {action[-1]} values: was it trained on "
            "another robot? Bind the calibration of the arm the policy was trained for."
        )
    if action and state and list(state) != list(action):
        raise CalibrationError(
            f"the checkpoint's observation.state has shape {state} but its action {action}: on a real arm the "
            "state must be the action's joints (same order) so that each command can be compared with the measured "
            "joints. Record observation.state as the joint positions (LeRobot's so101/koch followers do)."
        )


def _unset_training_flags(checkpoint: Path) -> None:
    """``safety_*`` saved in config.json by older versions would come back as rollout flags and override the
    limits just bound (they are already in the safety step: it was built from them at training)."""
    from .configuration_roboalign import SAFETY_FLAGS

    config_path = checkpoint / "config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    given = {k: config[k] for k in SAFETY_FLAGS if config.get(k) is not None}
    if given:
        logger.warning("Unset %s in %s: the bound limits apply unless given again at rollout.", given, config_path)
        config.update(dict.fromkeys(given))
        config_path.write_text(json.dumps(config, indent=4))


def _split_positional(argv: list[str]) -> list[str]:
    positional = [a for a in argv if not a.startswith("-")]
    if len(positional) > 1:
        raise SystemExit(f"roboalign calibration check: one FILE expected, got {positional}.")
    rest = [a for a in argv if a.startswith("-")]
    return rest + [f"--file={positional[0]}"] if positional else rest


def main_check(argv: list[str] | None = None) -> None:
    cfg = draccus.parse(config_class=CalibrationCheckConfig, args=_split_positional(list(argv or [])))
    if cfg.file is None:
        raise SystemExit("roboalign calibration check: give the calibration FILE (or --file=PATH).")
    try:
        calibration = check_calibration(cfg.file, cfg.robot)
        print(f"OK: {cfg.file} is a valid {cfg.robot.type} calibration ({len(calibration)} motors).")
        if cfg.install:
            print(f"Installed: {install_calibration(cfg.file, cfg.robot)}")
        if cfg.checkpoint is not None:
            bound, low, high = bind_to_checkpoint(
                cfg.checkpoint, joint_limits(calibration, cfg.robot), cfg.max_delta, cfg.replace_limits
            )
            print(f"Bound joint limits min={low} max={high} to the safety step in {bound}")
    except CalibrationError as err:
        raise SystemExit(f"roboalign calibration check: {err}") from None
