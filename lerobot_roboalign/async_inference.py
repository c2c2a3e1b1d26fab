"""LeRobot's async inference with RoboAlign: its policy server, and its robot client with the safety guard.

LeRobot's ``PolicyServer`` refuses policy types outside its fixed ``SUPPORTED_POLICIES`` list. This
module imports the plugin (registering ``roboalign``), adds it to that list and runs LeRobot's own server
and client, subclassed, so nothing in LeRobot is forked:

    # GPU machine
    python -m lerobot_roboalign.async_inference --host=0.0.0.0 --port=8080
    # robot machine
    python -m lerobot_roboalign.async_inference client --server_address=GPU_HOST:8080 \\
        --policy_type=roboalign --pretrained_name_or_path=outputs/.../pretrained_model \\
        --robot.type=so101_follower --robot.port=/dev/ttyACM0 --robot.id=my_so101_follower \\
        --robot.cameras="{front: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}" \\
        --task="Pick up the cube" --actions_per_chunk=16 --policy_device=cuda --safety_max_delta=5

Safety: the server post-processes each chunk's actions in time order from the joints measured in the
chunk's own observation (:class:`RoboAlignPolicyServer`). The client then blends overlapping chunks
(``--aggregate_fn_name``), which the server cannot see, so the last point before the motors is the
client: :class:`RoboAlignRobotClient` passes every command it is about to send through the same
:class:`~lerobot_roboalign.safety.CommandGuard` as the other entry points, with the joints read from the
arm's bus right before it. Its limits: ``--safety_*`` flags, else the checkpoint's safety step when the
checkpoint is on the robot machine too (``--pretrained_name_or_path``), else ``--safety_max_delta`` is
required.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import draccus
import torch
from lerobot.async_inference import constants, policy_server, robot_client
from lerobot.async_inference.configs import RobotClientConfig

import lerobot_policy_roboalign  # noqa: F401  (registers the roboalign config and its processor steps)
from lerobot_roboalign.safety import (
    DEFAULT_MAX_MEASUREMENT_AGE_S,
    SAFETY_STEP_NAME,
    CommandGuard,
    Limits,
    RoboAlignActionSafetyStep,
    capture,
    validate_limits,
    validate_max_measurement_age,
)

POLICY_TYPE = "roboalign"
logger = logging.getLogger(__name__)


class RoboAlignPolicyServer(policy_server.PolicyServer):
    """LeRobot's policy server; each chunk is rate-limited from the arm's measured position.

    Not from the previous chunk's end, which is a future target when the next chunk starts.
    """

    def _predict_action_chunk(self, observation_t):
        # The preprocessor hands this observation's joint positions to the safety step, which then limits
        # the chunk (actions for time steps t, t+1, ... of observation t) from there, not from the last chunk.
        for step in self.postprocessor.steps:
            if isinstance(step, RoboAlignActionSafetyStep):
                step.start_chunk_at_observation()
        return super()._predict_action_chunk(observation_t)


@dataclass
class RoboAlignRobotClientConfig(RobotClientConfig):
    # Largest change of a command per control step (joint units); default: the checkpoint's safety step.
    safety_max_delta: float | None = None
    # Per-joint limits in action order; default: the checkpoint's safety step.
    safety_joint_min: list[float] | None = None
    safety_joint_max: list[float] | None = None
    # Longest time (s) from an observation's capture to its chunk; for this client's own check, the bus reading
    # taken right before each command (older is none: the command is refused). One default with the policy's.
    safety_max_measurement_age_s: float = DEFAULT_MAX_MEASUREMENT_AGE_S


def client_limits(config: RoboAlignRobotClientConfig, dim: int) -> Limits:
    """Flags > the checkpoint's safety step (if the checkpoint is on this machine); max_delta is required."""
    saved = _saved_safety_step(Path(config.pretrained_name_or_path))
    max_delta = config.safety_max_delta if config.safety_max_delta is not None else saved.get("max_delta")
    low = config.safety_joint_min if config.safety_joint_min is not None else saved.get("joint_min")
    high = config.safety_joint_max if config.safety_joint_max is not None else saved.get("joint_max")
    if max_delta is None:
        raise ValueError(
            "RoboAlign client: no rate limit. Set --safety_max_delta (joint units per control step, e.g. 5), or "
            "pass a --pretrained_name_or_path that exists on this machine with a safety step in its "
            "policy_postprocessor.json."
        )
    validate_limits(max_delta, low, high, dim=dim)
    validate_max_measurement_age(config.safety_max_measurement_age_s)
    if low is None:
        logger.warning("RoboAlign client: no joint limits (--safety_joint_min/max); only the rate limit applies.")

    def per_joint(value):
        tensor = None if value is None else torch.as_tensor(value, dtype=torch.float64).flatten()
        return None if tensor is None else tensor.expand(dim).clone() if tensor.numel() == 1 else tensor

    return Limits(per_joint(max_delta), per_joint(low), per_joint(high), True, config.safety_max_measurement_age_s)


def _saved_safety_step(checkpoint: Path) -> dict:
    path = checkpoint / "policy_postprocessor.json"
    if not path.is_file():
        return {}
    steps = json.loads(path.read_text())["steps"]
    return next((s.get("config", {}) for s in steps if s.get("registry_name") == SAFETY_STEP_NAME), {})


class RoboAlignRobotClient(robot_client.RobotClient):
    """LeRobot's robot client whose every command passes the guard, after LeRobot's chunk aggregation."""

    def __init__(self, config: RoboAlignRobotClientConfig) -> None:
        self.guard = CommandGuard()
        super().__init__(config)
        self.limits = client_limits(config, len(self.robot.action_features))

    def _action_tensor_to_action_dict(self, action_tensor: torch.Tensor) -> dict[str, float]:
        """Called by LeRobot's control loop right before ``robot.send_action``: the command is guarded here."""
        self.guard.observe(capture(self._measured_joints()))
        safe = self.guard.command(action_tensor.reshape(1, -1), self.limits)
        if safe is None:
            raise RuntimeError(
                "RoboAlign client: no safe command (no joint reading from the arm); stopping before the motors."
            )
        return super()._action_tensor_to_action_dict(safe[0])

    def _measured_joints(self) -> torch.Tensor:
        """The joints now, read from the arm's bus (as LeRobot's ``max_relative_target`` does), in action order."""
        keys = list(self.robot.action_features)
        bus = getattr(self.robot, "bus", None)
        if bus is not None:
            present = bus.sync_read("Present_Position")
            values = [present[key.removesuffix(".pos")] for key in keys]
        else:
            observation = self.robot.get_observation()
            values = [observation[key] for key in keys]
        return torch.tensor(values, dtype=torch.float64)[None]


def register_with_policy_server() -> None:
    """Add ``roboalign`` to the server's accepted types (the list object the server checks against)."""
    for accepted in (constants.SUPPORTED_POLICIES, policy_server.SUPPORTED_POLICIES):
        if POLICY_TYPE not in accepted:
            accepted.append(POLICY_TYPE)


def client_main(argv: list[str] | None = None) -> None:
    """LeRobot's ``async_client`` with :class:`RoboAlignRobotClient` and its ``--safety_*`` flags."""
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    cfg = draccus.parse(config_class=RoboAlignRobotClientConfig, args=argv)
    robot_client.RobotClient = RoboAlignRobotClient  # async_client builds the client by this module-level name
    robot_client.async_client.__wrapped__(cfg)


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
        return
    register_with_policy_server()
    policy_server.PolicyServer = RoboAlignPolicyServer  # serve() builds the server by this module-level name
    policy_server.serve()


if __name__ == "__main__":
    main()
