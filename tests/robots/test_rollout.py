"""Closed-loop control of virtual SO-100/SO-101/Koch arms by ``lerobot-rollout`` and async inference.

LeRobot's rollout, robots, motor buses and SDKs run as on a real arm; only the serial port is
virtual. Each test binds the example calibration to a copy of the checkpoint's safety step
(``roboalign calibration check --checkpoint``) and checks what reached the servos.
"""

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import FOLLOWER_PORT, ROOT, virtualize

from lerobot_roboalign.calibration import main_check

pytestmark = pytest.mark.slow
MAX_DELTA = 4.0  # joint units per control step, bound into the checkpoint's safety step
TICK = 4095 / 360  # encoder ticks per degree (so_* use degrees)


def _checkpoint_for(arm_type: str, checkpoint: Path, tmp_path: Path) -> Path:
    bound = tmp_path / "pretrained_model"
    shutil.copytree(checkpoint, bound)
    main_check([str(ROOT / "calibration" / f"{arm_type}.json"), f"--robot.type={arm_type}",
                f"--checkpoint={bound}", f"--max_delta={MAX_DELTA}"])  # fmt: skip
    return bound


def _cameras(checkpoint: Path) -> dict[str, tuple[int, int]]:
    features = json.loads((checkpoint / "config.json").read_text())["input_features"]
    return {
        key.rsplit(".", 1)[-1]: tuple(spec["shape"][1:])
        for key, spec in features.items()
        if spec["type"] == "VISUAL"
    }


def _rollout(arm: str, checkpoint: Path, tmp_path: Path, follower, virtual_hw, *extra: str,
             commands: int = 30) -> None:  # fmt: skip
    """A rollout of ``commands`` control steps, however long a loaded machine takes for them (not a duration).

    Inferences are given a minute before the guard holds the arm on them (``safety_max_measurement_age_s``): these
    tests are not about that limit, which test_safety_issue29.py drives with an injected clock."""
    config = virtualize(ROOT / "robots" / arm / "rollout.yaml", tmp_path, _cameras(checkpoint))
    argv = [f"--config_path={config}", f"--policy.path={checkpoint}", "--device=cpu", "--duration=600",
            "--policy.safety_max_measurement_age_s=60", *extra]  # fmt: skip
    _run_rollout(argv, follower, virtual_hw, commands)


def _run_rollout(argv: list[str], follower, virtual_hw, commands: int | None = None) -> None:
    """``lerobot-rollout argv...`` in this process, the follower's serial port virtual; with ``commands``, stopped
    (LeRobot's own shutdown event) after that many commands reached the robot."""
    from unittest import mock

    import lerobot.scripts.lerobot_rollout as rollout_script
    from lerobot.rollout.robot_wrapper import ThreadSafeRobot
    from lerobot.scripts.lerobot_rollout import main

    build, send, found = rollout_script.build_rollout_context, ThreadSafeRobot.send_action, {"sent": 0}

    def spy_build(cfg, shutdown_event, *args, **kwargs):
        found["stop"] = shutdown_event
        return build(cfg, shutdown_event, *args, **kwargs)

    def spy_send(robot, action):
        found["sent"] += 1
        if found["sent"] >= commands:
            found["stop"].set()
        return send(robot, action)

    saved, sys.argv = sys.argv, ["lerobot-rollout", *argv]
    try:
        with virtual_hw.virtual_ports({FOLLOWER_PORT: follower}), contextlib.ExitStack() as stack:
            if commands is not None:
                stack.enter_context(mock.patch.object(rollout_script, "build_rollout_context", spy_build))
                stack.enter_context(mock.patch.object(ThreadSafeRobot, "send_action", spy_send))
            main()
    finally:
        sys.argv = saved


class _Recorder(logging.Handler):
    def __init__(self, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _max_step(goal_log: list[dict[str, int]], names: list[str]) -> float:
    ticks = torch.tensor([[g[n] for n in names] for g in goal_log], dtype=torch.float32)
    return ticks.diff(dim=0).abs().max().item() if len(ticks) > 1 else 0.0


@pytest.mark.parametrize("arm", ["so100", "so101", "koch"])
def test_rollout_commands_stay_in_calibrated_range_and_rate_limit(arm, roboalign_checkpoint, tmp_path, virtual_hw):
    arm_type = f"{arm}_follower"
    checkpoint = _checkpoint_for(arm_type, roboalign_checkpoint, tmp_path)
    follower = virtual_hw.VirtualArm.from_file(arm_type, ROOT / "calibration" / f"{arm_type}.json")
    _rollout(arm, checkpoint, tmp_path, follower, virtual_hw, "--return_to_initial_position=false")

    assert len(follower.goal_log) >= 20, "the policy drove the arm for at least 20 control steps"
    assert virtual_hw.goal_ticks_within(follower)
    joints = [n for n in virtual_hw.MOTOR_NAMES if n != "gripper"]
    if arm != "koch":  # degrees: MAX_DELTA degrees per step, +1 tick of rounding
        assert _max_step(follower.goal_log, joints) <= MAX_DELTA * TICK + 1
    assert follower.torque_enabled() == dict.fromkeys(virtual_hw.MOTOR_NAMES, 0)


def test_nan_chunk_holds_position_with_a_warning(roboalign_checkpoint, tmp_path, virtual_hw, monkeypatch):
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

    predict, calls = RoboAlignPolicy.predict_action_chunk, []

    def nan_second_chunk(self, batch, **kwargs):
        calls.append(1)
        chunk = predict(self, batch, **kwargs)
        return torch.full_like(chunk, float("nan")) if len(calls) == 2 else chunk

    monkeypatch.setattr(RoboAlignPolicy, "predict_action_chunk", nan_second_chunk)
    checkpoint = _checkpoint_for("so101_follower", roboalign_checkpoint, tmp_path)
    follower = virtual_hw.VirtualArm.from_file("so101_follower", ROOT / "calibration" / "so101_follower.json")
    warnings, loggers = _Recorder(), ("lerobot_roboalign.safety", "lerobot_roboalign.chunk_blending")
    for name in loggers:
        logging.getLogger(name).addHandler(warnings)  # lerobot's init_logging resets root
    try:
        _rollout(
            "so101", checkpoint, tmp_path, follower, virtual_hw,
            "--return_to_initial_position=false",
            "--policy.chunk_blend_steps=0",  # without cross-fading the drop shows as a hold at the chunk end
        )  # fmt: skip
    finally:
        for name in loggers:
            logging.getLogger(name).removeHandler(warnings)

    assert len(calls) >= 3 and any("non-finite" in m for m in warnings.messages)
    assert virtual_hw.goal_ticks_within(follower)
    held = [a == b for a, b in zip(follower.goal_log, follower.goal_log[1:])]
    # The NaN chunk is dropped: the arm holds its last safe target until the next (valid) chunk arrives,
    # which with LeRobot's synchronous inference is the very next control step.
    assert sum(held) >= 1, "the arm held its last safe target while the NaN chunk was dropped"


def test_late_chunk_does_not_jump(roboalign_checkpoint, tmp_path, virtual_hw, monkeypatch):
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

    predict, calls = RoboAlignPolicy.predict_action_chunk, []

    def late_third_chunk(self, batch, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            time.sleep(0.5)  # 15 control periods late
            return predict(self, batch, **kwargs) + 3.0  # and far from the previous chunk
        return predict(self, batch, **kwargs)

    monkeypatch.setattr(RoboAlignPolicy, "predict_action_chunk", late_third_chunk)
    checkpoint = _checkpoint_for("so101_follower", roboalign_checkpoint, tmp_path)
    follower = virtual_hw.VirtualArm.from_file("so101_follower", ROOT / "calibration" / "so101_follower.json")
    # 60 steps: at least 4 chunks, however long a loaded CPU takes for each inference
    _rollout("so101", checkpoint, tmp_path, follower, virtual_hw, "--return_to_initial_position=false",
             commands=60)  # fmt: skip

    assert len(calls) >= 4
    assert _max_step(follower.goal_log, list(virtual_hw.MOTOR_NAMES[:-1])) <= MAX_DELTA * TICK + 1
    assert virtual_hw.goal_ticks_within(follower)


def _start_away(follower, degrees: float) -> dict[str, int]:
    """Put the (torque-off) arm's joints ``degrees`` away from mid-range, like a hand left it; returns raw ticks."""
    start = {}
    for name in follower.calibration:
        if name != "gripper":
            cal = follower.calibration[name]
            start[name] = int((cal["range_min"] + cal["range_max"]) / 2 + degrees * TICK)
            follower.by_name(name).set("Present_Position", start[name])
    return start


def test_first_action_is_rate_limited_from_where_the_arm_is(roboalign_checkpoint, tmp_path, virtual_hw):
    """Issue 11 item 2: the arm rests 60 degrees from every target the policy can send (limits: dataset range)."""
    checkpoint = _checkpoint_for("so101_follower", roboalign_checkpoint, tmp_path)
    follower = virtual_hw.VirtualArm.from_file("so101_follower", ROOT / "calibration" / "so101_follower.json")
    start = _start_away(follower, -60.0)
    _rollout("so101", checkpoint, tmp_path, follower, virtual_hw, "--return_to_initial_position=false",
             commands=20)  # fmt: skip

    first = follower.goal_log[0]
    moved = {name: abs(first[name] - start[name]) / TICK for name in start}
    assert max(moved.values()) <= MAX_DELTA + 1 / TICK, f"first command moved {moved} degrees (max_delta {MAX_DELTA})"
    assert max(moved.values()) >= MAX_DELTA - 1 / TICK, "it does move towards the policy's targets"
    assert _max_step(follower.goal_log, list(start)) <= MAX_DELTA * TICK + 1


def test_safety_flags_given_at_rollout_override_the_checkpoint_and_are_printed(
    roboalign_checkpoint, tmp_path, virtual_hw
):
    """Issue 11 item 3: --policy.safety_max_delta=1 tightens the bound checkpoint's max_delta=4."""
    checkpoint = _checkpoint_for("so101_follower", roboalign_checkpoint, tmp_path)
    follower = virtual_hw.VirtualArm.from_file("so101_follower", ROOT / "calibration" / "so101_follower.json")
    start = _start_away(follower, -30.0)  # far from the targets: every step is a full max_delta
    info = _Recorder(logging.INFO)
    logging.getLogger("lerobot_roboalign.safety").addHandler(info)
    try:
        _rollout("so101", checkpoint, tmp_path, follower, virtual_hw, "--return_to_initial_position=false",
                 "--policy.safety_max_delta=1.0", commands=20)  # fmt: skip
    finally:
        logging.getLogger("lerobot_roboalign.safety").removeHandler(info)

    assert _max_step(follower.goal_log, list(start)) <= 1.0 * TICK + 1
    assert max(abs(follower.goal_log[0][n] - start[n]) for n in start) <= 1.0 * TICK + 1
    in_force = [m for m in info.messages if "safety in force" in m]
    assert in_force and "max_delta=1.0 (--policy.safety_max_delta)" in in_force[-1]


def test_bus_fault_mid_rollout_exits_clearly_and_leaves_torque_off(roboalign_checkpoint, tmp_path, virtual_hw):
    checkpoint = _checkpoint_for("so101_follower", roboalign_checkpoint, tmp_path)
    follower = virtual_hw.VirtualArm.from_file(
        "so101_follower", ROOT / "calibration" / "so101_follower.json", fail_after_goals=10
    )
    with pytest.raises(ConnectionError, match="Present_Position"):
        _rollout("so101", checkpoint, tmp_path, follower, virtual_hw)
    assert len(follower.goal_log) >= 10
    assert virtual_hw.goal_ticks_within(follower)
    assert follower.torque_enabled() == dict.fromkeys(virtual_hw.MOTOR_NAMES, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_async_inference_server_and_client_on_loopback(roboalign_checkpoint, tmp_path, virtual_hw, monkeypatch):
    monkeypatch.chdir(tmp_path)  # LeRobot's server and client (on import) write logs/ into the working directory
    import roboalign_virtual_hw
    from lerobot.async_inference.configs import RobotClientConfig
    from lerobot.async_inference.robot_client import RobotClient
    from lerobot.robots.so_follower import SO101FollowerConfig

    checkpoint = _checkpoint_for("so101_follower", roboalign_checkpoint, tmp_path)
    port = _free_port()
    server_log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "lerobot_roboalign.async_inference", "--host=127.0.0.1", f"--port={port}"],
        stdout=server_log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    follower = virtual_hw.VirtualArm.from_file("so101_follower", ROOT / "calibration" / "so101_follower.json")
    _start_away(follower, -60.0)  # far from every target: each chunk has to ramp (issue 11 item 1)
    calibration_dir = tmp_path / "cal"
    calibration_dir.mkdir()
    shutil.copyfile(ROOT / "calibration" / "so101_follower.json", calibration_dir / "arm.json")
    cameras = {
        name: roboalign_virtual_hw.SyntheticCameraConfig(width=w, height=h, fps=30)
        for name, (h, w) in _cameras(checkpoint).items()
    }
    robot = SO101FollowerConfig(port=FOLLOWER_PORT, id="arm", calibration_dir=calibration_dir,
                                max_relative_target=10.0, cameras=cameras)  # fmt: skip
    cfg = RobotClientConfig(policy_type="roboalign", pretrained_name_or_path=str(checkpoint), robot=robot,
                            actions_per_chunk=8, task="pick up the red cube", server_address=f"127.0.0.1:{port}",
                            policy_device="cpu", fps=30)  # fmt: skip
    try:
        with virtual_hw.virtual_ports({FOLLOWER_PORT: follower}):
            client = _start_client(cfg, RobotClient, server)
            measured, chunks = _record_async_traffic(client)
            receiver = threading.Thread(target=client.receive_actions, daemon=True)
            receiver.start()
            loop = threading.Thread(target=client.control_loop, kwargs={"task": cfg.task}, daemon=True)
            loop.start()
            deadline = time.monotonic() + 300  # a cap: the loop ends at 20 commands
            while len(follower.goal_log) < 20 and time.monotonic() < deadline and loop.is_alive():
                time.sleep(0.1)
            client.stop()
            loop.join(10)
            receiver.join(10)
    finally:
        server.terminate()
        server.wait(timeout=30)
        output = (tmp_path / "server.log").read_text()
    assert len(follower.goal_log) >= 20, f"fewer than 20 actions executed; server log:\n{output[-3000:]}"
    assert virtual_hw.goal_ticks_within(follower)
    assert "roboalign" in output
    # Each chunk starts at the joint position measured in its own observation (its first action is labelled with
    # that observation's time step) and moves at most max_delta per step: never from the previous chunk's end.
    assert len(chunks) >= 2
    for timesteps, actions in chunks:
        assert torch.allclose(actions[0], measured[timesteps[0]], atol=1e-3), (timesteps[0], actions[0])
        assert actions.diff(dim=0).abs().max() <= MAX_DELTA + 1e-3


def _record_async_traffic(client) -> tuple[dict[int, torch.Tensor], list[tuple[list[int], torch.Tensor]]]:
    """What LeRobot's client sends (joint positions per observation time step) and receives (timed chunks)."""
    measured: dict[int, torch.Tensor] = {}
    chunks: list[tuple[list[int], torch.Tensor]] = []
    send, aggregate = client.send_observation, client._aggregate_action_queues
    joints = list(client.robot.action_features)

    def send_observation(obs):
        raw = obs.get_observation()
        measured[obs.get_timestep()] = torch.tensor([float(raw[k]) for k in joints])
        return send(obs)

    def aggregate_action_queues(incoming, aggregate_fn=None):
        chunks.append(([a.get_timestep() for a in incoming], torch.stack([a.get_action() for a in incoming])))
        return aggregate(incoming, aggregate_fn)

    client.send_observation, client._aggregate_action_queues = send_observation, aggregate_action_queues
    return measured, chunks


def _start_client(cfg, client_class, server: subprocess.Popen):
    """The server takes a moment to bind; LeRobot's client does not retry its first call."""
    deadline = time.monotonic() + 300  # a cap: a loaded 2-core machine takes minutes to import and load
    while time.monotonic() < deadline and server.poll() is None:
        time.sleep(1.0)
        client = client_class(cfg)
        if client.start():
            return client
        client.robot.disconnect()
    raise TimeoutError(f"the policy server did not come up on {cfg.server_address} within 300 s")
