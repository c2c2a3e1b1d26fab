"""``roboalign rollout check``: the pre-flight to run before ``lerobot-rollout`` moves a real arm.

It takes exactly the flags (or ``--config_path``) of the ``lerobot-rollout`` it precedes, parsed by LeRobot's own
:class:`~lerobot.rollout.configs.RolloutConfig`, and checks, one line each, with the exact fix for a failure:
the robot type is given; a calibration file is installed for this ``--robot.id``, is valid for the arm and is the
one in the motors (else LeRobot would ask to recalibrate, and stop with ``EOFError`` under a launcher without a
terminal); the robot's cameras and state match the checkpoint's features; the safety limits are bound to this
arm's calibration and sane; the policy loads and one inference fits the safety step's measurement age limit.
Nothing is written to the motors (the bus is opened only to read its calibration registers).

    roboalign rollout check --config_path=robots/so101/rollout.yaml --policy.path=outputs/train/so101/checkpoints/last/pretrained_model
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .calibration import POSTPROCESSOR_FILE, CalibrationError, DeviceSpec, check_calibration, joint_limits

PROG = "roboalign rollout check"
USAGE = f"""usage: {PROG} [-h] [--config_path=FILE] [--robot.type=TYPE] [--robot.id=ID] [--policy.path=DIR] ...

Takes the flags (or --config_path) of the lerobot-rollout command it precedes (`lerobot-rollout --help` lists
them) and checks, before any motor moves: the robot type, the installed calibration (file and motors), cameras
and state against the checkpoint, the safety limits, and that one inference fits the measurement age limit.
Exits non-zero if any check fails, printing the fix."""
SUPPORTED_ROBOTS = ("so100_follower", "so101_follower", "koch_follower")
LIMIT_TOLERANCE = 1e-6


@dataclass
class Check:
    """One pre-flight line: ``ok`` or the problem with the exact fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        return (
            f"[ ok ] {self.name}: {self.detail}"
            if self.ok
            else f"[FAIL] {self.name}: {self.detail} Fix: {self.fix}"
        )


def _example_command(robot_type: str) -> str:
    arm = robot_type.split("_")[0]
    return f"--config_path=robots/{arm}/rollout.yaml (or --robot.type={robot_type} --robot.port=... --robot.id=...)"


def check_robot_type(argv: list[str]) -> Check:
    """Before LeRobot parses: without a robot type its parser stops with a draccus decode error."""
    given = next((a.split("=", 1)[1] for a in argv if a.startswith("--robot.type=")), None)
    config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config_path=")), None)
    if given is None and config_path is not None and not Path(config_path).is_file():
        return Check("robot type", False, f"--config_path={config_path} does not exist.",
                     "pass an existing file, e.g. --config_path=robots/so101/rollout.yaml from the clone, or write "
                     "them out with `roboalign files export .`.")  # fmt: skip
    if given is None and config_path is not None:
        given = ((yaml.safe_load(Path(config_path).read_text()) or {}).get("robot") or {}).get("type")
    if not given:
        return Check("robot type", False, "no --robot.type and none in --config_path: lerobot-rollout cannot build "
                     "the robot (it stops with a draccus decode error).", _example_command("so101_follower"))  # fmt: skip
    if given not in SUPPORTED_ROBOTS:
        return Check("robot type", False, f"{given!r} is not an arm RoboAlign's pre-flight knows.",
                     f"use one of {', '.join(SUPPORTED_ROBOTS)}.")  # fmt: skip
    return Check("robot type", True, given)


def parse_rollout_config(argv: list[str]):
    """The :class:`RolloutConfig` ``lerobot-rollout argv`` would run with (LeRobot's parser, plugins registered)."""
    import lerobot.scripts.lerobot_rollout  # noqa: F401  (registers the robots, cameras and engines it knows)
    from lerobot.configs import parser
    from lerobot.rollout.configs import RolloutConfig

    import lerobot_roboalign

    lerobot_roboalign.register()
    parsed = {}

    def capture(cfg: RolloutConfig) -> None:
        parsed["cfg"] = cfg

    # parser.wrap reads the annotation's class, not this module's (postponed) string annotation.
    capture.__annotations__["cfg"] = RolloutConfig
    saved, sys.argv = sys.argv, [PROG, *argv]
    try:
        parser.wrap()(capture)()
    finally:
        sys.argv = saved
    return parsed["cfg"]


def _spec(arm_type: str, robot_config) -> DeviceSpec:
    """The arm as the user named it (LeRobot reports an SO-101 config's type as so100_follower)."""
    return DeviceSpec(
        type=arm_type, id=robot_config.id, use_degrees=getattr(robot_config, "use_degrees", None)
    )


def _install_fix(spec: DeviceSpec) -> str:
    arm_type, robot_id = spec.type, spec.id or "NAME"
    return (f"roboalign calibration check calibration/{arm_type}.json --robot.type={arm_type} --install=true "
            f"--robot.id={robot_id} (an example file; your arm's own: lerobot-calibrate --robot.type={arm_type} "
            f"--robot.port=... --robot.id={robot_id}).")  # fmt: skip


def check_calibration_file(robot, spec: DeviceSpec) -> tuple[Check, dict | None]:
    """The file LeRobot loads for this id exists and is valid for the arm type."""
    config = robot.config
    if not config.id:
        return Check("calibration", False, "no --robot.id: LeRobot keeps one calibration per id.",
                     "add --robot.id=NAME, the id you calibrated or installed the file under."), None  # fmt: skip
    path = Path(robot.calibration_fpath)
    if not path.is_file():
        return Check("calibration", False, f"no calibration installed for --robot.id={config.id} ({path}): "
                     "lerobot-rollout would start an interactive calibration (EOFError without a terminal).",
                     _install_fix(spec)), None  # fmt: skip
    try:
        calibration = check_calibration(path, spec)
    except CalibrationError as err:
        return Check("calibration", False, str(err).replace("\n", " "),
                     f"re-run lerobot-calibrate --robot.type={spec.type} --robot.port=... --robot.id={config.id}, "
                     f"or install a valid file: {_install_fix(spec)}"), None  # fmt: skip
    return Check("calibration", True, f"{path} is a valid {spec.type} calibration"), calibration


def check_motors(robot, spec: DeviceSpec) -> Check:
    """The calibration in the motors' registers is the file's (LeRobot's own ``is_calibrated`` rule)."""
    bus = robot.bus
    try:
        bus.connect()
    except Exception as err:  # noqa: BLE001  (serial and SDK errors differ per vendor; all mean the same here)
        return Check("motors", False, f"could not talk to the arm on {robot.config.port} ({err}).",
                     "plug in and power the arm, find its port with lerobot-find-port and pass --robot.port=PORT.")  # fmt: skip
    try:
        in_motors = bus.read_calibration()
        same = bus.is_calibrated
    finally:
        bus.disconnect(disable_torque=False)
    if same:
        return Check("motors", True, f"the motors on {robot.config.port} hold the file's calibration")
    differ = sorted(m for m, c in in_motors.items() if c != bus.calibration.get(m))
    return Check("motors", False, f"motors {differ} hold another calibration than {robot.calibration_fpath}: "
                 "lerobot-rollout would ask to recalibrate (EOFError without a terminal).",
                 f"if this is another arm, pass its --robot.id; else re-run lerobot-calibrate --robot.type="
                 f"{spec.type} --robot.port={robot.config.port} --robot.id={robot.config.id}.")  # fmt: skip


def _training_names(checkpoint: Path) -> dict[str, list[str]]:
    """Feature names of the dataset the checkpoint was trained on, when it is on this machine."""
    train_config = checkpoint / "train_config.json"
    if not train_config.is_file():
        return {}
    dataset = json.loads(train_config.read_text()).get("dataset") or {}
    from lerobot.utils.constants import HF_LEROBOT_HOME

    root = Path(dataset["root"]) if dataset.get("root") else HF_LEROBOT_HOME / str(dataset.get("repo_id"))
    info = root / "meta" / "info.json"
    if not info.is_file():
        return {}
    features = json.loads(info.read_text())["features"]
    names = {key: features[key].get("names") for key in ("observation.state", "action") if key in features}
    # Only a recording from a LeRobot robot names its joints (`shoulder_pan.pos`); other data says nothing here.
    return {key: value for key, value in names.items()
            if isinstance(value, list) and value and all(str(n).endswith(".pos") for n in value)}  # fmt: skip


def check_features(robot, spec: DeviceSpec, policy_config, rename_map: dict[str, str]) -> Check:
    """Every camera the checkpoint reads is on the robot at the trained size; state and action match."""
    problems, fixes = [], []
    cameras = {f"observation.images.{name}": shape for name, shape in robot.observation_features.items()
               if isinstance(shape, tuple)}  # fmt: skip
    provided = {rename_map.get(key, key): shape for key, shape in cameras.items()}
    for key, feature in policy_config.image_features.items():
        if key not in provided:
            problems.append(f"the checkpoint reads camera {key!r}, the robot has {sorted(cameras)}")
            fixes.append(f"name a robot camera {key.rsplit('.', 1)[-1]!r} in --robot.cameras, or map one with "
                         f"--rename_map='{{\"{next(iter(cameras), 'observation.images.NAME')}\": \"{key}\"}}'")  # fmt: skip
        elif tuple(provided[key]) != (feature.shape[1], feature.shape[2], feature.shape[0]):
            height, width = feature.shape[1:]
            problems.append(
                f"camera {key!r} is {provided[key][0]}x{provided[key][1]}, trained at {height}x{width}"
            )
            fixes.append(f"set its width: {width}, height: {height} in --robot.cameras")
    joints = [
        k for k, v in robot.observation_features.items() if not isinstance(v, tuple) and k.endswith(".pos")
    ]
    names = _training_names(Path(policy_config.pretrained_path))
    for key, feature in (("observation.state", policy_config.robot_state_feature),
                         ("action", policy_config.action_feature)):  # fmt: skip
        if feature is not None and feature.shape[0] != len(joints):
            problems.append(f"{key} has {feature.shape[0]} values in the checkpoint, the robot {len(joints)}")
            fixes.append(f"use a checkpoint trained on a {spec.type} recording")
        elif names.get(key) and list(names[key]) != joints:
            problems.append(f"{key} names {names[key]} at training, the robot {joints}")
            fixes.append(f"use a checkpoint trained on a {spec.type} recording")
    if problems:
        return Check("cameras and state", False, "; ".join(problems) + ".", "; ".join(fixes) + ".")
    return Check(
        "cameras and state", True, f"cameras {sorted(provided)} and {len(joints)} joints match the checkpoint"
    )


def _safety_step(checkpoint: Path) -> dict[str, Any] | None:
    from .safety import SAFETY_STEP_NAME

    path = checkpoint / POSTPROCESSOR_FILE
    steps = json.loads(path.read_text())["steps"] if path.is_file() else []
    return next((s.get("config", {}) for s in steps if s.get("registry_name") == SAFETY_STEP_NAME), None)


def _limits_problems(
    limits: dict[str, Any], calibrated: tuple[list[float], list[float]] | None, max_relative_target: Any
) -> list[str]:
    low, high, delta = limits["joint_min"], limits["joint_max"], limits["max_delta"]
    if low is None or high is None:
        return ["no joint limits"]
    if len(low) != len(high) or any(not lo < hi for lo, hi in zip(low, high, strict=True)):
        return [f"joint limits min={low} max={high} are not one lower-than-upper pair per joint"]
    deltas = delta if isinstance(delta, list) else [delta]
    # Same units as LeRobot's max_relative_target; above it the policy's own rate limit would never act.
    ceiling = max_relative_target if isinstance(max_relative_target, int | float) else math.inf
    if delta is None or any(not (math.isfinite(d) and 0 < d <= ceiling) for d in deltas):
        return [
            f"max_delta={delta} is not a positive step of at most max_relative_target ({max_relative_target})"
        ]
    if calibrated is not None:
        cal_low, cal_high = calibrated
        outside = [i for i, (lo, hi) in enumerate(zip(low, high, strict=True))
                   if lo < cal_low[i] - LIMIT_TOLERANCE or hi > cal_high[i] + LIMIT_TOLERANCE]  # fmt: skip
        if outside:
            return [
                f"joint limits of joints {outside} reach past this arm's calibrated range (not bound to it)"
            ]
    return []


def check_safety(cfg, spec: DeviceSpec, calibration: dict | None, calibration_path: Path) -> Check:
    """The safety step is on, its limits are bound inside this arm's calibrated ranges and its rate limit is sane."""
    checkpoint = Path(cfg.policy.pretrained_path)
    step = _safety_step(checkpoint)
    bind = (f"roboalign calibration check {calibration_path} --robot.type={spec.type} --checkpoint={checkpoint} "
            "--max_delta=4")  # fmt: skip
    if step is None:
        return Check(
            "safety limits", False, f"{checkpoint / POSTPROCESSOR_FILE} has no RoboAlign safety step.", bind
        )
    limits = {}
    for key in ("enabled", "max_delta", "joint_min", "joint_max"):  # --policy.safety_* given at rollout win
        given = getattr(cfg.policy, f"safety_{key}", None)
        limits[key] = step.get(key) if given is None else given
    problems = [] if limits["enabled"] is not False else ["the safety step is disabled"]
    calibrated = joint_limits(calibration, spec) if calibration is not None else None
    max_relative_target = getattr(cfg.robot, "max_relative_target", None)
    problems += _limits_problems(limits, calibrated, max_relative_target)
    if max_relative_target is None:
        problems.append("--robot.max_relative_target is unset (LeRobot's own, independent bound)")
        bind += "; and set --robot.max_relative_target=10 (robots/*/rollout.yaml do)"
    if problems:
        return Check("safety limits", False, "; ".join(problems) + ".", bind)
    return Check("safety limits", True, f"on, max_delta={limits['max_delta']}, joint limits inside the calibrated "
                 f"ranges, max_relative_target={cfg.robot.max_relative_target}")  # fmt: skip


def _measurement_age_limit(checkpoint: Path, given: float | None = None) -> float:
    """The safety step's limit: ``--policy.safety_max_measurement_age_s`` at rollout, else the checkpoint's."""
    from .safety import DEFAULT_MAX_MEASUREMENT_AGE_S

    saved = (_safety_step(checkpoint) or {}).get("max_measurement_age_s")
    return float(given or saved or DEFAULT_MAX_MEASUREMENT_AGE_S)


def _observation(robot) -> dict[str, Any]:
    """A still frame in the robot's own format: joints at zero, black images of each camera's size."""
    import numpy as np

    return {key: np.zeros(shape, dtype=np.uint8) if isinstance(shape, tuple) else 0.0
            for key, shape in robot.observation_features.items()}  # fmt: skip


def check_inference(cfg, robot, clock: Callable[[], float]) -> Check:
    """Load the policy and processors as lerobot-rollout does and time one inference from observation to action."""
    import torch
    from lerobot.common.control_utils import predict_action
    from lerobot.policies import get_policy_class, make_pre_post_processors
    from lerobot.utils.feature_utils import build_dataset_frame, hw_to_dataset_features

    checkpoint = Path(cfg.policy.pretrained_path)
    device = cfg.device or cfg.policy.device or "cpu"
    try:
        policy = (
            get_policy_class(cfg.policy.type).from_pretrained(checkpoint, config=cfg.policy).to(device).eval()
        )
        preprocessor, postprocessor = make_pre_post_processors(
            policy_cfg=cfg.policy, pretrained_path=str(checkpoint),
            preprocessor_overrides={"device_processor": {"device": device},
                                    "rename_observations_processor": {"rename_map": cfg.rename_map}},
        )  # fmt: skip
    except Exception as err:  # noqa: BLE001  (any load error is this check's failure, with its message)
        return Check("policy", False, f"{checkpoint} does not load ({type(err).__name__}: {err}).",
                     "pass --policy.path=.../checkpoints/last/pretrained_model of a finished lerobot-train run, and "
                     "its backbone with --policy.vlm_model_name=... if it was trained on another machine.")  # fmt: skip
    features = hw_to_dataset_features(
        {k: v for k, v in robot.observation_features.items() if isinstance(v, tuple) or k.endswith(".pos")},
        "observation",
    )
    frame = build_dataset_frame(features, _observation(robot), prefix="observation")
    start = clock()
    try:
        predict_action(frame, policy, torch.device(device), preprocessor, postprocessor, use_amp=False,
                       task=cfg.task, robot_type=robot.name)  # fmt: skip
    except Exception as err:  # noqa: BLE001  (the policy's own input checks name the problem and its fix)
        return Check("policy", False, f"loads, but an inference on this robot's observation failed: {err}",
                     "fix the cameras and state above first; the error names the key.")  # fmt: skip
    seconds = clock() - start
    if getattr(cfg.inference, "type", "sync") == "rtc":
        return _rtc_latency_check(cfg, seconds)
    limit = _measurement_age_limit(checkpoint, getattr(cfg.policy, "safety_max_measurement_age_s", None))
    if seconds > limit:
        return Check("policy", False, f"loads, but one inference took {seconds:.2f} s, over the safety step's "
                     f"measurement age limit of {limit:g} s: every command would be refused and the arm would hold.",
                     "run on a GPU (--device=cuda), use a smaller backbone, or RTC (robots/<arm>/rollout_rtc.yaml).")  # fmt: skip
    return Check("policy", True, f"{cfg.policy.type} loads on {device}; one inference {seconds:.2f} s "
                 f"(measurement age limit {limit:g} s)")  # fmt: skip


def _rtc_latency_check(cfg, seconds: float) -> Check:
    """Under RTC the arm runs the previous chunk meanwhile: the delay in control steps must fit the execution horizon
    and leave half a chunk, or the queue runs dry (README: Inference modes)."""
    delay = math.ceil(seconds * cfg.fps)
    horizon, chunk = cfg.inference.rtc.execution_horizon, cfg.policy.chunk_size
    if delay >= horizon or chunk < 2 * delay:
        return Check("policy", False, f"loads, but one inference took {seconds:.2f} s = {delay} control steps at "
                     f"{cfg.fps:g} fps: RTC needs fewer than --inference.rtc.execution_horizon={horizon} and at most "
                     f"half the chunk ({chunk}).", "run on a GPU (--device=cuda), use a smaller backbone, or train "
                     f"with --policy.chunk_size={2 * delay} or more and set --inference.rtc.execution_horizon="
                     f"{delay + 1} or more.")  # fmt: skip
    return Check("policy", True, f"{cfg.policy.type} loads; one inference {seconds:.2f} s = {delay} control steps "
                 f"(RTC execution horizon {horizon}, chunk {chunk})")  # fmt: skip


def run_checks(argv: list[str], clock: Callable[[], float] = time.perf_counter) -> list[Check]:
    """Every check in order; a check that needs a failed one's result is left out."""
    checks = [check_robot_type(argv)]
    if not checks[-1].ok:
        return checks
    if not any(a.startswith("--policy.path=") for a in argv):
        return [*checks, Check("policy", False, "no --policy.path: nothing to check against the robot.",
                               "add --policy.path=outputs/train/NAME/checkpoints/last/pretrained_model.")]  # fmt: skip
    try:
        cfg = parse_rollout_config(argv)
    except Exception as err:  # noqa: BLE001  (draccus and the config's own checks raise several kinds)
        return [*checks, Check("flags", False, f"lerobot-rollout would refuse them: {err}",
                               "correct the flag named above (lerobot-rollout --help lists them).")]  # fmt: skip
    if cfg.policy.type != "roboalign":
        return [*checks, Check("policy", False, f"{cfg.policy.pretrained_path} is a {cfg.policy.type!r} policy.",
                               "this pre-flight checks RoboAlign checkpoints (--policy.type=roboalign).")]  # fmt: skip
    from lerobot.robots import make_robot_from_config

    robot = make_robot_from_config(cfg.robot)
    spec = _spec(checks[0].detail, cfg.robot)
    calibration_check, calibration = check_calibration_file(robot, spec)
    checks.append(calibration_check)
    if calibration is not None:
        checks.append(check_motors(robot, spec))
    checks.append(check_features(robot, spec, cfg.policy, cfg.rename_map))
    checks.append(check_safety(cfg, spec, calibration, Path(robot.calibration_fpath)))
    checks.append(check_inference(cfg, robot, clock))
    return checks


def main_check(argv: list[str] | None = None) -> None:
    argv = list(argv or [])
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return
    checks = run_checks(argv)
    print("\n".join(check.line() for check in checks))
    failed = [check.name for check in checks if not check.ok]
    if failed:
        raise SystemExit(
            f"{PROG}: {len(failed)} check(s) failed ({', '.join(failed)}); fix them before lerobot-rollout."
        )
    print(f"{PROG}: all {len(checks)} checks passed; run lerobot-rollout with the same flags.")
