"""LeRobot's async-inference policy server, with ``roboalign`` among the policies it accepts.

LeRobot's ``PolicyServer`` refuses policy types outside its fixed ``SUPPORTED_POLICIES``
list. This launcher imports the plugin (registering ``roboalign``), adds it to that list and
runs LeRobot's own server, so nothing in LeRobot is forked. The robot side is LeRobot's
unchanged client:

    # GPU machine
    python -m lerobot_roboalign.async_inference --host=0.0.0.0 --port=8080
    # robot machine
    python -m lerobot.async_inference.robot_client --server_address=GPU_HOST:8080 \\
        --policy_type=roboalign --pretrained_name_or_path=outputs/.../pretrained_model \\
        --robot.type=so101_follower --robot.port=/dev/ttyACM0 --robot.id=my_so101_follower \\
        --robot.cameras="{front: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}" \\
        --task="Pick up the cube" --actions_per_chunk=16 --policy_device=cuda \\
        --robot.max_relative_target=10

Safety: the server post-processes each chunk's actions in time order, and a chunk starts in
the middle of the previous one. :class:`RoboAlignPolicyServer` therefore restarts the safety
step's rate limit at every chunk from the joint position measured in the chunk's own
observation (its first action, labelled with that observation's time step, is that position),
instead of from the last action of the previous chunk (a future target). The client then
blends overlapping chunks (``--aggregate_fn_name``), which the server cannot see: keep
``--robot.max_relative_target`` set on the client.
"""

from lerobot.async_inference import constants, policy_server

import lerobot_roboalign  # noqa: F401  (registers the roboalign config and its processor steps)
from lerobot_roboalign.safety import RoboAlignActionSafetyStep

POLICY_TYPE = "roboalign"


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


def register_with_policy_server() -> None:
    """Add ``roboalign`` to the server's accepted types (the list object the server checks against)."""
    for accepted in (constants.SUPPORTED_POLICIES, policy_server.SUPPORTED_POLICIES):
        if POLICY_TYPE not in accepted:
            accepted.append(POLICY_TYPE)


def main() -> None:
    register_with_policy_server()
    policy_server.PolicyServer = RoboAlignPolicyServer  # serve() builds the server by this module-level name
    policy_server.serve()


if __name__ == "__main__":
    main()
