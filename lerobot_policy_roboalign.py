"""Entry point for LeRobot's plugin discovery.

LeRobot imports a module named exactly like every installed ``lerobot_policy_*``
distribution; importing it registers the ``roboalign`` policy (and this package's envs).
"""

import lerobot_roboalign  # noqa: F401
